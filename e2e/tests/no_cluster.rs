//! The no-cluster end-to-end run: the data path of a cluster without the cluster.
//!
//! A tansu broker and a throw-away PostgreSQL (`eventstream_testkit`); the stream of
//! `examples/sim-racing-telemetry.yaml`, its topics created by the operator's Kafka admin code
//! and its dataplane config rendered by the operator's config builder; the real
//! `eventstream-dataplane` binary run as two bridge processes (the example asks for
//! `bridge.replicas: 2`) and one sink process. Then, as an application sees it: a producer posts
//! events over HTTP, WebSocket clients receive them, rows land in PostgreSQL; the sink is
//! SIGKILLed and restarted, one bridge is stopped (SIGTERM) and the other killed (SIGKILL), each
//! restarted; every client resumes and, at the end, everyone has every event exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use eventstream_crds::config::ENV_POSTGRES_URL;
use eventstream_crds::v1alpha1::Timescale;
use eventstream_e2e::client::{Follower, Position, Producer};
use eventstream_e2e::process::Dataplane;
use eventstream_e2e::{STEP_TIMEOUT, binary, eventually, stream};
use eventstream_testkit::{TansuBroker, TestPostgres};
use serde_json::json;

const TABLE: &str = "e2e_telemetry_frames";
const SESSIONS: u64 = 4;
const WATCHED_SESSION: &str = "session-1";

/// Every acknowledged event: where Kafka put it → its `seq` and `sessionId`.
#[derive(Default)]
struct Acks(BTreeMap<Position, (u64, String)>);

impl Acks {
    fn all(&self) -> BTreeSet<Position> {
        self.0.keys().copied().collect()
    }

    fn of_session(&self, session: &str) -> BTreeSet<Position> {
        self.0
            .iter()
            .filter(|(_, (_, s))| s == session)
            .map(|(p, _)| *p)
            .collect()
    }

    fn count_of_session(&self, session: &str) -> usize {
        self.of_session(session).len()
    }
}

/// Posts `n` events to `produce_url`, one request at a time (see `Producer`).
async fn post_events(
    producer: &Producer,
    produce_url: &str,
    acks: &mut Acks,
    next_seq: &mut u64,
    n: u64,
) -> Result<()> {
    for _ in 0..n {
        let seq = *next_seq;
        *next_seq += 1;
        let session = format!("session-{}", seq % SESSIONS);
        let event = json!({
            "eventType": "frame",
            "sessionId": session,
            "timestamp": format!("2025-06-01T10:00:{:02}.{:03}Z", seq / 1000 % 60, seq % 1000),
            "seq": seq,
            "lap": seq / 10,
            "speed": 200.0 + (seq % 50) as f64,
        });
        let position = producer.post(produce_url, &event).await?;
        if acks.0.insert(position, (seq, session)).is_some() {
            bail!("two acknowledgements name {position:?}");
        }
    }
    Ok(())
}

/// Checks a follower got exactly `expected` (no loss, no duplicate), each with the payload
/// acknowledged at its position, in offset order within every partition.
fn check_follower(f: &Follower, expected: &BTreeSet<Position>, acks: &Acks) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in f.received() {
        ensure!(
            seen.insert(r.position),
            "{f:?}: duplicate event at {:?}",
            r.position
        );
        if let Some(prev) = last.insert(r.position.partition, r.position.offset) {
            ensure!(
                r.position.offset > prev,
                "partition {}: offset {} after {prev}",
                r.position.partition,
                r.position.offset
            );
        }
        let (seq, _) = acks
            .0
            .get(&r.position)
            .with_context(|| format!("event at {:?} was never acknowledged", r.position))?;
        ensure!(
            r.data["seq"] == json!(seq),
            "event at {:?} carries {}, the acknowledgement said seq {seq}",
            r.position,
            r.data
        );
    }
    let missing: Vec<_> = expected.difference(&seen).collect();
    let extra: Vec<_> = seen.difference(expected).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    Ok(())
}

/// `(partition, offset) → seq` of every row in the table, failing on a duplicate row.
fn rows(pg: &TestPostgres) -> Result<BTreeMap<Position, u64>> {
    let out = pg.psql(
        "postgres",
        &format!("SELECT \"partition\", \"offset\", payload->>'seq' FROM {TABLE} ORDER BY 1, 2"),
    )?;
    let mut rows = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('|').collect();
        let [p, o, seq] = cols.as_slice() else {
            bail!("unexpected psql line {line:?}");
        };
        let position = Position {
            partition: p.parse()?,
            offset: o.parse()?,
        };
        if rows.insert(position, seq.parse()?).is_some() {
            bail!("duplicate row for {position:?}");
        }
    }
    Ok(rows)
}

/// Waits until the table holds exactly the acknowledged events, once each, and the positions
/// table says every partition is complete.
async fn rows_match(pg: &TestPostgres, acks: &Acks) -> Result<()> {
    let expected: BTreeMap<Position, u64> = acks.0.iter().map(|(p, (s, _))| (*p, *s)).collect();
    eventually(
        "the table to hold every acknowledged event once",
        STEP_TIMEOUT,
        || async {
            let table = rows(pg)?;
            if table.len() > expected.len() {
                bail!(
                    "{} rows for {} events: duplicates",
                    table.len(),
                    expected.len()
                );
            }
            Ok((table == expected).then_some(()))
        },
    )
    .await?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for p in acks.0.keys() {
        let e = next.entry(p.partition).or_default();
        *e = (*e).max(p.offset + 1);
    }
    let out = pg.psql(
        "postgres",
        "SELECT \"partition\", next_offset FROM eventstream_offsets \
         WHERE stream = 'racing/telemetry' AND next_offset > 0 ORDER BY 1",
    )?;
    let stored: BTreeMap<i32, i64> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (p, n) = l.split_once('|').context("partition|next_offset")?;
            Ok((p.parse()?, n.parse()?))
        })
        .collect::<Result<_>>()?;
    ensure!(
        stored == next,
        "eventstream_offsets {stored:?}, expected {next:?}"
    );
    Ok(())
}

fn dataplane_binary() -> Result<std::path::PathBuf> {
    binary::dataplane().context("building or finding the eventstream-dataplane binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_stream_end_to_end_with_crashes_and_restarts() -> Result<()> {
    let binary = tokio::task::spawn_blocking(dataplane_binary).await??;
    let broker = TansuBroker::start()?;
    let pg = TestPostgres::start()?;

    // The example as the operator would see it, with what this machine supplies instead of a
    // cluster: the broker, a table name, and no TimescaleDB (`timescale: on` would make the sink
    // refuse to start, as documented, since the extension is not installed here).
    let mut es = stream::load_example("sim-racing-telemetry.yaml")?;
    es.spec.kafka.bootstrap_servers = Some(broker.bootstrap());
    let persistence = es
        .spec
        .persistence
        .as_mut()
        .context("the example persists")?;
    persistence.postgres.table = TABLE.into();
    persistence.timescale = Timescale::Disabled;
    ensure!(es.spec.bridge.replicas == 2, "the example runs two bridges");

    // Topics through the operator's admin code; a second pass changes nothing.
    let (topic, dlq) = stream::ensure_topics(&es, &broker.bootstrap()).await?;
    ensure!(topic.created, "{topic:?}");
    ensure!(topic.topic.name == "racing.telemetry", "{topic:?}");
    ensure!(topic.topic.partitions == 10, "{topic:?}");
    ensure!(
        topic.topic.configs.get("retention.ms").map(String::as_str) == Some("604800000"),
        "retention 7d reaches the topic: {:?}",
        topic.topic.configs
    );
    ensure!(
        topic
            .topic
            .configs
            .get("compression.type")
            .map(String::as_str)
            == Some("lz4"),
        "{:?}",
        topic.topic.configs
    );
    ensure!(
        dlq == Some(("racing.telemetry.dlq".to_string(), true)),
        "dead-letter topic created: {dlq:?}"
    );
    let (again, dlq_again) = stream::ensure_topics(&es, &broker.bootstrap()).await?;
    ensure!(
        dlq_again == Some(("racing.telemetry.dlq".to_string(), false)),
        "dead-letter topic left alone: {dlq_again:?}"
    );
    ensure!(
        !again.created && again.raised_from.is_none() && again.corrected.is_empty(),
        "a second reconcile changes nothing: {again:?}"
    );

    // Configs as the ConfigMap would hold them, one listen port per process.
    let dir = tempfile::Builder::new()
        .prefix("eventstream-e2e-")
        .tempdir()?;
    let start = |name: &str, mode: &'static str| -> Result<Dataplane> {
        let listen = stream::free_listen()?;
        let config = stream::render(&es, listen)?;
        let path = stream::write_config(&config, dir.path(), name)?;
        let mut dp = Dataplane::new(name, &binary, mode, &path, listen, dir.path());
        if mode == "sink" {
            dp = dp.env(ENV_POSTGRES_URL, &pg.url());
        }
        Ok(dp)
    };
    let mut sink = start("sink", "sink")?;
    let mut bridge_a = start("bridge-a", "bridge")?;
    let mut bridge_b = start("bridge-b", "bridge")?;
    sink.start(STEP_TIMEOUT).await?;
    bridge_a.start(STEP_TIMEOUT).await?;
    bridge_b.start(STEP_TIMEOUT).await?;
    let result = run_scenario(&pg, &mut sink, &mut bridge_a, &mut bridge_b).await;
    if result.is_err() {
        for dp in [&sink, &bridge_a, &bridge_b] {
            eprintln!("{}", dp.log_tail(60));
        }
        eprintln!("--- tansu ---\n{}", broker.log_tail(40));
        eprintln!("--- postgres ---\n{}", pg.log_tail(40));
    }
    result
}

async fn run_scenario(
    pg: &TestPostgres,
    sink: &mut Dataplane,
    bridge_a: &mut Dataplane,
    bridge_b: &mut Dataplane,
) -> Result<()> {
    let producer = Producer::new()?;
    let mut acks = Acks::default();
    let mut seq = 0;

    // 1. Clients on both replicas: everything on each, and one session on the second.
    let mut all_a = Follower::connect("all@a", &bridge_a.ws_url("/ws"), "*", STEP_TIMEOUT).await?;
    let mut all_b = Follower::connect("all@b", &bridge_b.ws_url("/ws"), "*", STEP_TIMEOUT).await?;
    let mut one_b = Follower::connect(
        "session@b",
        &bridge_b.ws_url("/ws"),
        WATCHED_SESSION,
        STEP_TIMEOUT,
    )
    .await?;

    // 2. Ingest through both replicas; both deliver everything, rows land once.
    post_events(
        &producer,
        &bridge_a.http_url("/produce"),
        &mut acks,
        &mut seq,
        30,
    )
    .await?;
    post_events(
        &producer,
        &bridge_b.http_url("/produce"),
        &mut acks,
        &mut seq,
        30,
    )
    .await?;
    all_a.wait_for(acks.0.len(), STEP_TIMEOUT).await?;
    all_b.wait_for(acks.0.len(), STEP_TIMEOUT).await?;
    one_b
        .wait_for(acks.count_of_session(WATCHED_SESSION), STEP_TIMEOUT)
        .await?;
    check_follower(&all_a, &acks.all(), &acks).context("all@a after ingest")?;
    check_follower(&all_b, &acks.all(), &acks).context("all@b after ingest")?;
    check_follower(&one_b, &acks.of_session(WATCHED_SESSION), &acks)
        .context("session@b after ingest")?;
    rows_match(pg, &acks).await.context("rows after ingest")?;

    // 3. Sink crash. Without the primary key a row written twice would stay visible, so the
    // check below rests on the offsets transaction alone.
    drop_primary_key(pg)?;
    post_events(
        &producer,
        &bridge_a.http_url("/produce"),
        &mut acks,
        &mut seq,
        20,
    )
    .await?;
    // Within the example's `maxDelay: 1s`: the sink has read these but most likely not
    // committed them yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let committed = rows(pg)?.len();
    sink.kill()?;
    eprintln!(
        "SIGKILLed the sink with {committed} of {} rows committed",
        acks.0.len()
    );
    post_events(
        &producer,
        &bridge_b.http_url("/produce"),
        &mut acks,
        &mut seq,
        20,
    )
    .await?;
    sink.start(STEP_TIMEOUT).await?;
    rows_match(pg, &acks)
        .await
        .context("rows after the sink's SIGKILL and restart")?;

    // 4. Graceful bridge restart (SIGTERM, as on a rollout): its client is told to go away,
    // misses what is posted meanwhile, reconnects and resumes from its own positions.
    for f in [&mut all_a, &mut all_b] {
        f.wait_for(acks.0.len(), STEP_TIMEOUT).await?;
    }
    one_b
        .wait_for(acks.count_of_session(WATCHED_SESSION), STEP_TIMEOUT)
        .await?;
    bridge_a.terminate(STEP_TIMEOUT).await?;
    let code = all_a.drain_until_closed(STEP_TIMEOUT).await?;
    ensure!(
        code == Some(1001),
        "a stopping bridge closes with 1001, got {code:?}"
    );
    post_events(
        &producer,
        &bridge_b.http_url("/produce"),
        &mut acks,
        &mut seq,
        15,
    )
    .await?;
    bridge_a.start(STEP_TIMEOUT).await?;
    let before = all_a.received().len();
    all_a.reconnect(STEP_TIMEOUT).await?;
    let replayed = all_a.received()[before..]
        .iter()
        .filter(|r| r.replayed)
        .count();
    ensure!(
        replayed == 15,
        "all@a replayed {replayed} events on resume, expected 15"
    );
    post_events(
        &producer,
        &bridge_a.http_url("/produce"),
        &mut acks,
        &mut seq,
        15,
    )
    .await?;

    // 5. Crash of the other bridge (SIGKILL): no goodbye, the clients just lose the socket.
    for f in [&mut all_a, &mut all_b] {
        f.wait_for(acks.0.len(), STEP_TIMEOUT).await?;
    }
    one_b
        .wait_for(acks.count_of_session(WATCHED_SESSION), STEP_TIMEOUT)
        .await?;
    bridge_b.kill()?;
    all_b.drain_until_closed(STEP_TIMEOUT).await?;
    one_b.drain_until_closed(STEP_TIMEOUT).await?;
    let before_all = all_b.received().len();
    let before_one = one_b.received().len();
    let session_before = acks.count_of_session(WATCHED_SESSION);
    post_events(
        &producer,
        &bridge_a.http_url("/produce"),
        &mut acks,
        &mut seq,
        20,
    )
    .await?;
    let session_missed = acks.count_of_session(WATCHED_SESSION) - session_before;
    bridge_b.start(STEP_TIMEOUT).await?;
    all_b.reconnect(STEP_TIMEOUT).await?;
    one_b.reconnect(STEP_TIMEOUT).await?;
    let replayed_all = all_b.received()[before_all..]
        .iter()
        .filter(|r| r.replayed)
        .count();
    let replayed_one = one_b.received()[before_one..]
        .iter()
        .filter(|r| r.replayed)
        .count();
    ensure!(
        replayed_all == 20,
        "all@b replayed {replayed_all}, expected 20"
    );
    ensure!(
        replayed_one == session_missed,
        "session@b replayed {replayed_one}, expected {session_missed}"
    );
    post_events(
        &producer,
        &bridge_b.http_url("/produce"),
        &mut acks,
        &mut seq,
        20,
    )
    .await?;

    // 6. The end state: every client has every event of its channel exactly once, in order;
    // the table has every event exactly once.
    all_a.wait_for(acks.0.len(), STEP_TIMEOUT).await?;
    all_b.wait_for(acks.0.len(), STEP_TIMEOUT).await?;
    one_b
        .wait_for(acks.count_of_session(WATCHED_SESSION), STEP_TIMEOUT)
        .await?;
    for f in [&mut all_a, &mut all_b, &mut one_b] {
        f.expect_silence(Duration::from_millis(500)).await?;
    }
    check_follower(&all_a, &acks.all(), &acks).context("all@a at the end")?;
    check_follower(&all_b, &acks.all(), &acks).context("all@b at the end")?;
    check_follower(&one_b, &acks.of_session(WATCHED_SESSION), &acks)
        .context("session@b at the end")?;
    ensure!(all_a.connects() == 2 && all_b.connects() == 2 && one_b.connects() == 2);
    rows_match(pg, &acks).await.context("rows at the end")?;
    eprintln!(
        "{} events: every client and the table have each exactly once",
        acks.0.len()
    );
    Ok(())
}

/// Removes the events table's primary key (the sink keeps it as a last line of defence; the
/// exactly-once check must not lean on it).
fn drop_primary_key(pg: &TestPostgres) -> Result<()> {
    pg.psql(
        "postgres",
        &format!("ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pk"),
    )?;
    let left = pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = '{TABLE}'::regclass AND contype IN ('p', 'u')"
        ),
    )?;
    ensure!(left.trim() == "0", "{TABLE} still has a unique constraint");
    Ok(())
}

/// Every example renders (with the operator's config builder) into a config the real binary
/// accepts: what the operator writes into ConfigMaps is what pods can start with.
#[test]
fn every_example_renders_a_config_the_binary_accepts() -> Result<()> {
    let binary = dataplane_binary()?;
    let dir = tempfile::tempdir()?;
    let files = stream::example_files()?;
    ensure!(files.len() >= 5, "examples: {files:?}");
    for file in files {
        let mut es = stream::load_example(&file)?;
        if es.spec.kafka.bootstrap_servers.is_none() {
            es.spec.kafka.bootstrap_servers = Some("kafka.kafka:9092".into());
        }
        let config = stream::render(&es, "0.0.0.0:8080".parse()?)?;
        let path = stream::write_config(&config, dir.path(), file.trim_end_matches(".yaml"))?;
        check_config(&binary, &path, &config.stream.label()).with_context(|| file.clone())?;
    }
    Ok(())
}

fn check_config(binary: &Path, config: &Path, label: &str) -> Result<()> {
    let out = Command::new(binary)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains(&format!("valid config for stream {label}")),
        "check-config {}: {}\n{stdout}{}",
        config.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
