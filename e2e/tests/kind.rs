//! The kind suite: the operator, installed by its Helm chart, against a real API server, a real
//! Kafka (single-node KRaft) and a real PostgreSQL, all inside a kind cluster.
//!
//! Run by `e2e/kind.sh`, which creates the cluster, loads the image, installs Kafka and
//! PostgreSQL from `e2e/manifests/`, installs the chart and then runs
//! `cargo test -p eventstream-e2e --features kind --test kind` with `KUBECONFIG` pointing at the
//! cluster. Each test works in a namespace of its own (`e2e-<test>-<run>`), so a failed run
//! leaves everything in place for the logs the script collects; every name a test creates
//! (namespace, table) carries the run's start time and pid ([`RunId`]), so a rerun against a
//! kept cluster (`E2E_KEEP_CLUSTER=1`) never meets what an earlier run left behind.
//!
//! Kafka and PostgreSQL are reached the way an operator of the cluster would: `kubectl exec`
//! into their pods for `kafka-topics.sh`, `kafka-configs.sh` (each with a small heap of its
//! own: [`kafka_tool_args`]) and `psql`, `kubectl port-forward` to a bridge pod for ingest and
//! WebSocket clients.
#![cfg(feature = "kind")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use eventstream_crds::EventStream;
use eventstream_e2e::client::{Follower, Position, Producer};
use eventstream_e2e::eventually;
use eventstream_e2e::kind::{RunId, kafka_tool_args};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// How long a stream may take to become `Ready` (image already loaded; pods start, Kafka answers).
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a change may take to reach Kafka or the clients.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// Bootstrap servers the streams name (the Kafka of `e2e/manifests/kafka.yaml`).
fn kafka_bootstrap() -> String {
    env_or("E2E_KAFKA_BOOTSTRAP", "kafka.kafka.svc.cluster.local:9092")
}

fn kafka_namespace() -> String {
    env_or("E2E_KAFKA_NAMESPACE", "kafka")
}

/// The database URL the sink gets (the PostgreSQL of `e2e/manifests/postgres.yaml`).
fn postgres_url() -> String {
    env_or(
        "E2E_POSTGRES_URL",
        "postgres://eventstream:eventstream@postgres.postgres.svc.cluster.local:5432/eventstream",
    )
}

fn postgres_namespace() -> String {
    env_or("E2E_POSTGRES_NAMESPACE", "postgres")
}

/// Runs `kubectl ARGS` and returns its stdout; a failure carries stderr.
fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .context("running kubectl (is it on PATH?)")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Kafka CLI tool inside the Kafka pod, on its pod-local listener (no hairpin through the
/// Service), with a small heap of its own: it runs beside the broker under one memory limit.
fn kafka_tool(tool: &str, args: &[&str]) -> Result<String> {
    let all = kafka_tool_args(&kafka_namespace(), tool, args);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    kubectl(&all)
}

/// A table of `test` in the shared PostgreSQL, unique to this run.
fn table(test: &str) -> Result<String> {
    Ok(RunId::current().table(test)?)
}

/// Partitions of `topic` as the broker reports them; `None` when it does not exist.
fn topic_partitions(topic: &str) -> Result<Option<i32>> {
    let list = kafka_tool("kafka-topics.sh", &["--list"])?;
    if !list.lines().any(|l| l.trim() == topic) {
        return Ok(None);
    }
    let describe = kafka_tool("kafka-topics.sh", &["--describe", "--topic", topic])?;
    let count = describe
        .split_whitespace()
        .skip_while(|w| *w != "PartitionCount:")
        .nth(1)
        .ok_or_else(|| anyhow!("no PartitionCount in {describe}"))?;
    Ok(Some(count.parse()?))
}

/// A dynamic topic config (`retention.ms`, …) as `kafka-configs.sh --describe` lists it.
fn topic_config(topic: &str, key: &str) -> Result<Option<String>> {
    let out = kafka_tool(
        "kafka-configs.sh",
        &[
            "--entity-type",
            "topics",
            "--entity-name",
            topic,
            "--describe",
        ],
    )?;
    let prefix = format!("{key}=");
    Ok(out
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned))
}

/// `psql -Atc SQL` in the PostgreSQL pod.
fn psql(sql: &str) -> Result<String> {
    let ns = postgres_namespace();
    kubectl(&[
        "exec",
        "-n",
        &ns,
        "deploy/postgres",
        "--",
        "psql",
        "-U",
        "eventstream",
        "-d",
        "eventstream",
        "-v",
        "ON_ERROR_STOP=1",
        "-Atc",
        sql,
    ])
}

/// `kubectl port-forward pod/NAME :8080`, killed on drop.
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    fn start(namespace: &str, pod: &str) -> Result<Self> {
        let mut child = Command::new("kubectl")
            .args([
                "port-forward",
                "-n",
                namespace,
                &format!("pod/{pod}"),
                ":8080",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running kubectl port-forward")?;
        let stdout = child.stdout.take().context("port-forward stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps reading after the first line: kubectl blocks once its stdout pipe is full.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            let _ = child.kill();
            anyhow!("kubectl port-forward to {namespace}/{pod} printed nothing within 30 s")
        })?;
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        let port = line
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("unexpected port-forward output {line:?}"))?;
        Ok(Self { child, port })
    }

    fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's namespace, with the database Secret the streams reference.
struct Scenario {
    client: Client,
    namespace: String,
}

impl Scenario {
    async fn new(test: &str) -> Result<Self> {
        let client = Client::try_default()
            .await
            .context("connecting with the current kubeconfig")?;
        let namespace = RunId::current().namespace(test)?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"eventstream.dev/e2e": "true"}}
        }))?;
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {namespace}"))?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "e2e-db"},
            "stringData": {"url": postgres_url()}
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        Ok(Self { client, namespace })
    }

    fn streams(&self) -> Api<EventStream> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The topic name the operator uses: `<namespace>.<name>`.
    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.namespace)
    }

    /// Creates an EventStream on the e2e Kafka with `spec` merged over a small default.
    async fn create(&self, name: &str, spec: Value) -> Result<EventStream, kube::Error> {
        let mut full = json!({
            "kafka": {"bootstrapServers": kafka_bootstrap()},
            "topic": {"partitions": 3, "replicationFactor": 1},
            "ingest": {"keyField": "/sessionId", "requiredFields": ["sessionId"]},
            "websocket": {"channel": {"field": "/sessionId"}},
        });
        merge(&mut full, spec);
        let es: EventStream = serde_json::from_value(json!({
            "apiVersion": "eventstream.dev/v1alpha1",
            "kind": "EventStream",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": full,
        }))
        .map_err(kube::Error::SerdeError)?;
        self.streams().create(&PostParams::default(), &es).await
    }

    /// Waits for `Ready=True` with `observedGeneration` at the current generation.
    async fn wait_ready(&self, name: &str) -> Result<EventStream> {
        let api = self.streams();
        eventually(
            &format!("EventStream {name} to be Ready"),
            READY_TIMEOUT,
            || {
                let api = api.clone();
                async move {
                    let es = api.get(name).await?;
                    let status = es.status.clone().unwrap_or_default();
                    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
                    let current = status.observed_generation == es.metadata.generation;
                    match ready {
                        Some(c) if c.status == "True" && current => Ok(Some(es)),
                        Some(c) => bail!("Ready={} {}: {}", c.status, c.reason, c.message),
                        None => bail!("no Ready condition yet"),
                    }
                }
            },
        )
        .await
    }

    async fn patch_spec(&self, name: &str, spec: Value) -> Result<()> {
        self.streams()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .with_context(|| format!("patching EventStream {name}"))?;
        Ok(())
    }

    /// Deletes the stream and waits until the operator released its finalizer.
    async fn delete(&self, name: &str) -> Result<()> {
        let api = self.streams();
        api.delete(name, &DeleteParams::default()).await?;
        eventually(
            &format!("EventStream {name} to be gone"),
            CHANGE_TIMEOUT,
            || {
                let api = api.clone();
                async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
            },
        )
        .await
    }

    /// Names of the ready bridge pods of `name` (not terminating).
    async fn ready_bridge_pods(&self, name: &str) -> Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!("eventstream.dev/stream={name},app.kubernetes.io/component=bridge");
        let list = pods.list(&ListParams::default().labels(&selector)).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|p| p.name_any())
            .collect())
    }

    /// Deletes the namespace (only after a passing test: a failing one is kept for the logs).
    async fn finish(self) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

async fn post_sessions(producer: &Producer, url: &str, from: u64, n: u64) -> Result<Vec<Position>> {
    let mut positions = Vec::new();
    for seq in from..from + n {
        let event = json!({"sessionId": format!("session-{}", seq % 3), "seq": seq});
        positions.push(producer.post(url, &event).await?);
    }
    Ok(positions)
}

fn positions_of(f: &Follower) -> Result<BTreeSet<Position>> {
    let mut set = BTreeSet::new();
    for r in f.received() {
        ensure!(
            set.insert(r.position),
            "duplicate event at {:?}",
            r.position
        );
    }
    Ok(set)
}

/// An EventStream becomes Ready; its topic exists with the spec's partitions; events posted to
/// ingest reach a WebSocket client (through a port-forward) and land in PostgreSQL.
#[tokio::test]
async fn stream_becomes_ready_and_carries_events_to_clients_and_postgres() -> Result<()> {
    let s = Scenario::new("ready").await?;
    let table = table("ready")?;
    s.create(
        "ready",
        json!({
            "topic": {"partitions": 3},
            "persistence": {
                "postgres": {"urlSecretRef": {"name": "e2e-db", "key": "url"}, "table": &table},
                "timescale": "Disabled",
                "batch": {"maxRows": 100, "maxDelay": "500ms"}
            }
        }),
    )
    .await?;
    let es = s.wait_ready("ready").await?;
    let topic = s.topic("ready");
    ensure!(
        topic_partitions(&topic)? == Some(3),
        "topic {topic} has 3 partitions"
    );
    let reported = es.status.and_then(|st| st.topic).and_then(|t| t.partitions);
    ensure!(reported == Some(3), "status.topic.partitions {reported:?}");
    // The broker does not auto-create topics (e2e/manifests/kafka.yaml): the operator did.
    let dlq = format!("{topic}.dlq");
    ensure!(
        topic_partitions(&dlq)? == Some(1),
        "dead-letter topic {dlq} has 1 partition"
    );

    let pods = s.ready_bridge_pods("ready").await?;
    let pod = pods.first().context("a ready bridge pod")?;
    let pf = PortForward::start(&s.namespace, pod)?;
    let mut client = Follower::connect("client", &pf.ws("/ws"), "*", CHANGE_TIMEOUT).await?;
    let producer = Producer::new()?;
    let acked: BTreeSet<Position> = post_sessions(&producer, &pf.http("/produce"), 0, 30)
        .await?
        .into_iter()
        .collect();
    client.wait_for(acked.len(), CHANGE_TIMEOUT).await?;
    ensure!(
        positions_of(&client)? == acked,
        "the client got exactly what was acknowledged"
    );

    let sql = format!("SELECT count(*), count(DISTINCT (\"partition\", \"offset\")) FROM {table}");
    eventually("30 rows in PostgreSQL", CHANGE_TIMEOUT, || async {
        Ok((psql(&sql)?.trim() == "30|30").then_some(()))
    })
    .await?;
    // The stream's namespace goes; the table in the shared database would stay.
    s.delete("ready").await?;
    psql(&format!("DROP TABLE {table}"))?;
    s.finish().await
}

/// Two bridge replicas: a client on each receives every event (no shared consumer group).
/// `eventstream.dev/reset-sink-offsets: earliest` scales the sink down, records the offsets in
/// the status, removes the annotation and brings the sink back, which stores the topic again:
/// the table (created here without a key) holds every event twice, no offset three times.
#[tokio::test]
async fn sink_offset_reset_to_earliest_stores_the_topic_again() -> Result<()> {
    let s = Scenario::new("reset").await?;
    let table = table("reset")?;
    psql(&format!(
        r#"CREATE TABLE {table} ("partition" integer NOT NULL, "offset" bigint NOT NULL, key text,
           ts timestamptz NOT NULL, payload jsonb, headers jsonb,
           ingested_at timestamptz NOT NULL DEFAULT now())"#
    ))?;
    s.create(
        "reset",
        json!({
            "persistence": {
                "postgres": {"urlSecretRef": {"name": "e2e-db", "key": "url"}, "table": &table},
                "timescale": "Disabled",
                "batch": {"maxRows": 100, "maxDelay": "500ms"}
            }
        }),
    )
    .await?;
    s.wait_ready("reset").await?;
    let pods = s.ready_bridge_pods("reset").await?;
    let pod = pods.first().context("a ready bridge pod")?;
    let pf = PortForward::start(&s.namespace, pod)?;
    post_sessions(&Producer::new()?, &pf.http("/produce"), 0, 20).await?;
    let counts =
        format!("SELECT count(*), count(DISTINCT (\"partition\", \"offset\")) FROM {table}");
    eventually("20 rows", CHANGE_TIMEOUT, || async {
        Ok((psql(&counts)?.trim() == "20|20").then_some(()))
    })
    .await?;

    s.streams()
        .patch(
            "reset",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"eventstream.dev/reset-sink-offsets": "earliest"}}})),
        )
        .await?;
    let api = s.streams();
    eventually(
        "the reset to be recorded and the annotation removed",
        READY_TIMEOUT,
        || {
            let api = api.clone();
            async move {
                let es = api.get("reset").await?;
                let pending = es
                    .annotations()
                    .contains_key("eventstream.dev/reset-sink-offsets");
                let recorded = es
                    .status
                    .and_then(|st| st.sink)
                    .and_then(|sink| sink.offset_reset)
                    .is_some_and(|r| r.to == "earliest");
                Ok((!pending && recorded).then_some(()))
            }
        },
    )
    .await?;
    eventually(
        "every event stored a second time",
        CHANGE_TIMEOUT,
        || async { Ok((psql(&counts)?.trim() == "40|20").then_some(())) },
    )
    .await?;
    s.wait_ready("reset").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(psql(&counts)?.trim() == "40|20", "applied once, not again");
    psql(&format!("DROP TABLE {table}"))?;
    s.finish().await
}

#[tokio::test]
async fn two_bridge_replicas_both_deliver_everything() -> Result<()> {
    let s = Scenario::new("replicas").await?;
    s.create("fanout", json!({"bridge": {"replicas": 2}}))
        .await?;
    s.wait_ready("fanout").await?;
    let pods = eventually("two ready bridge pods", READY_TIMEOUT, || async {
        let pods = s.ready_bridge_pods("fanout").await?;
        Ok((pods.len() == 2).then_some(pods))
    })
    .await?;
    let forwards = pods
        .iter()
        .map(|p| PortForward::start(&s.namespace, p))
        .collect::<Result<Vec<_>>>()?;
    let mut clients = Vec::new();
    for (i, pf) in forwards.iter().enumerate() {
        clients.push(
            Follower::connect(&format!("client@{i}"), &pf.ws("/ws"), "*", CHANGE_TIMEOUT).await?,
        );
    }
    let producer = Producer::new()?;
    let mut acked = BTreeSet::new();
    acked.extend(post_sessions(&producer, &forwards[0].http("/produce"), 0, 20).await?);
    acked.extend(post_sessions(&producer, &forwards[1].http("/produce"), 20, 20).await?);
    for c in &mut clients {
        c.wait_for(acked.len(), CHANGE_TIMEOUT).await?;
        ensure!(positions_of(c)? == acked, "{c:?} got everything once");
    }
    s.finish().await
}

/// A retention change in the spec reaches the topic's config.
#[tokio::test]
async fn retention_change_reaches_the_topic() -> Result<()> {
    let s = Scenario::new("retention").await?;
    s.create("retention", json!({"topic": {"retention": "1d"}}))
        .await?;
    s.wait_ready("retention").await?;
    let topic = s.topic("retention");
    ensure!(topic_config(&topic, "retention.ms")?.as_deref() == Some("86400000"));
    s.patch_spec("retention", json!({"topic": {"retention": "2d"}}))
        .await?;
    eventually(
        "retention.ms=172800000 on the topic",
        CHANGE_TIMEOUT,
        || async {
            Ok(
                (topic_config(&topic, "retention.ms")?.as_deref() == Some("172800000"))
                    .then_some(()),
            )
        },
    )
    .await?;
    s.wait_ready("retention").await?;
    s.finish().await
}

/// A partition increase in the spec reaches the topic.
#[tokio::test]
async fn partition_increase_reaches_the_topic() -> Result<()> {
    let s = Scenario::new("partitions").await?;
    s.create("grow", json!({"topic": {"partitions": 2}}))
        .await?;
    s.wait_ready("grow").await?;
    let topic = s.topic("grow");
    ensure!(topic_partitions(&topic)? == Some(2));
    s.patch_spec("grow", json!({"topic": {"partitions": 4}}))
        .await?;
    eventually("4 partitions on the topic", CHANGE_TIMEOUT, || async {
        Ok((topic_partitions(&topic)? == Some(4)).then_some(()))
    })
    .await?;
    let es = s.wait_ready("grow").await?;
    let reported = es.status.and_then(|st| st.topic).and_then(|t| t.partitions);
    ensure!(reported == Some(4), "status.topic.partitions {reported:?}");
    s.finish().await
}

/// The API server refuses an invalid resource (the CRD's schema), before the operator sees it.
#[tokio::test]
async fn invalid_stream_is_refused_by_the_api_server() -> Result<()> {
    let s = Scenario::new("invalid").await?;
    match s.create("zero", json!({"topic": {"partitions": 0}})).await {
        Err(kube::Error::Api(status)) => {
            ensure!(status.code == 422, "422 Invalid, got {status:?}");
            ensure!(
                status.message.contains("partitions"),
                "the message names the field: {}",
                status.message
            );
        }
        Ok(_) => bail!("partitions: 0 was accepted"),
        Err(other) => bail!("unexpected error {other}"),
    }
    ensure!(s.streams().get_opt("zero").await?.is_none());
    s.finish().await
}

/// Deleting a stream with `deletionPolicy: Delete` removes its topic; with `Retain` it stays.
#[tokio::test]
async fn deletion_policy_decides_the_topic_fate() -> Result<()> {
    let s = Scenario::new("deletion").await?;
    s.create("doomed", json!({"topic": {"deletionPolicy": "Delete"}}))
        .await?;
    s.create("kept", json!({"topic": {"deletionPolicy": "Retain"}}))
        .await?;
    s.wait_ready("doomed").await?;
    s.wait_ready("kept").await?;
    let (doomed, kept) = (s.topic("doomed"), s.topic("kept"));
    ensure!(topic_partitions(&doomed)?.is_some() && topic_partitions(&kept)?.is_some());
    s.delete("doomed").await?;
    s.delete("kept").await?;
    eventually("the Delete topic to be gone", CHANGE_TIMEOUT, || async {
        Ok(topic_partitions(&doomed)?.is_none().then_some(()))
    })
    .await?;
    ensure!(
        topic_partitions(&kept)? == Some(3),
        "the Retain topic {kept} is still there"
    );
    s.finish().await
}
