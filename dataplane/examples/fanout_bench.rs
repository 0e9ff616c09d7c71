//! Fan-out benchmark: K WebSocket clients over loopback on one in-process bridge fed by an
//! in-process Kafka (librdkafka's mock cluster, which answers fetches at once).
//!
//! The clients run in a child process (this same binary with `--role clients`), so the bridge
//! process's RSS is the bridge's own: RSS per idle connection is measured there. Prints one
//! table row per scenario: deliveries/s, end-to-end p50/p99 (producer wall clock → client
//! receive, same machine clock), RSS per connection.
//!
//! Two more tables separate the bridge's cost from the clients': CPU per thread group (the
//! bridge's Tokio workers, librdkafka's threads with the mock broker, the clients) per delivery,
//! and where the latency accumulates (Kafka → consumed → offered → taken by the writer →
//! flushed → read by the client), from the relay's stage histograms.
//!
//! A scenario `CLIENTSxRATEfFILTERS` (e.g. `10000x50f100`) subscribes every client to `*`
//! with one of FILTERS distinct CEL filters (`data.i >= -k`, k = client index mod FILTERS, all
//! true, so deliveries stay comparable): the bridge evaluates each record once per distinct
//! filter, and the rows show what that costs against the same scenario without filters.
//!
//! `--pin 0:1` pins the bridge process (every thread: broker, consumer, Tokio workers) to CPU 0
//! and the clients to CPU 1 (`taskset`), so that neither steals the other's core.
//!
//! `--transport socketio` runs the same scenarios with Socket.IO clients (`/socket.io/`,
//! Engine.IO v4 over WebSocket, `subscribe` to `*`, records as `event(v1 event, meta)`) instead
//! of protocol v1 clients on `/ws`: the same load, for the row of `docs/benchmarks.md` that
//! compares them. The Socket.IO client is a minimal one written here (open, connect the
//! default namespace, answer pings), so that both runs spend the same client code per frame.
//!
//! ```sh
//! cargo run --release -p eventstream-dataplane --example fanout_bench
//! cargo run --release -p eventstream-dataplane --example fanout_bench -- --scenarios 1000x50 --transport socketio
//! cargo run --release -p eventstream-dataplane --example fanout_bench -- --scenarios 1000x500,10000x50 --seconds 10
//! cargo run --release -p eventstream-dataplane --example fanout_bench -- --scenarios 10000x50 --pin 0:1
//! cargo run --release -p eventstream-dataplane --example fanout_bench -- --scenarios 10000x50,10000x50f1,10000x50f100,10000x50f10000
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use eventstream_crds::config::DataplaneConfig;
use futures::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_tungstenite::tungstenite::Message;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from /proc (100 ticks per second).
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces) start after ')'.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU seconds per thread group of a process: (Tokio workers, everything else), from
/// `/proc/<pid>/task/*/stat` (threads that ended are not counted).
fn thread_cpu_seconds(pid: u32) -> (f64, f64) {
    let (mut runtime, mut other) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0.0, 0.0);
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        if comm.starts_with("tokio-r") {
            runtime += cpu;
        } else {
            other += cpu;
        }
    }
    (runtime, other)
}

/// The 1-minute load average (everything runnable on the machine, other users' work included).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<()> {
    match arg("--role").as_deref() {
        Some("clients") => clients_main(),
        _ => bench_main(),
    }
}

// ---------- clients (child process) ----------

/// Latency histogram shared by every client task: 50 µs buckets up to 2 s, then one overflow
/// bucket. Lock-free, so recording costs one atomic add.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

const BUCKET_US: u64 = 50;
const BUCKETS: usize = 40_000;

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: (0..=BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, micros: u64) {
        let i = ((micros / BUCKET_US) as usize).min(BUCKETS);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn clear(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// The upper bound (µs) of the bucket holding quantile `q`.
    fn percentile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (i as u64 + 1) * BUCKET_US;
            }
        }
        BUCKETS as u64 * BUCKET_US
    }
}

/// Which clients the bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Protocol v1 on `/ws`.
    Ws,
    /// Socket.IO v4 on `/socket.io/`, WebSocket transport.
    SocketIo,
}

impl Transport {
    fn parse(text: Option<String>) -> Result<Self> {
        match text.as_deref() {
            None | Some("ws") => Ok(Self::Ws),
            Some("socketio") => Ok(Self::SocketIo),
            Some(other) => bail!("--transport is ws or socketio, not {other}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::SocketIo => "socketio",
        }
    }
}

type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, answering Engine.IO pings (`2`) on the way.
async fn next_text(ws: &mut ClientWs) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                ws.send(Message::Text("3".into())).await?;
            }
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during the handshake"),
        }
    }
}

/// Opens one client and subscribes it to `*`.
async fn open_client(url: &str, transport: Transport, filter: Option<&str>) -> Result<ClientWs> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    match transport {
        Transport::Ws => {
            let mut subscribe = serde_json::json!({"type": "subscribe", "channel": "*"});
            if let Some(filter) = filter {
                subscribe["filter"] = filter.into();
            }
            ws.send(Message::Text(subscribe.to_string().into())).await?;
        }
        Transport::SocketIo => {
            // Engine.IO open (`0{…}`), then the default namespace (`40` → `40{sid}`), then
            // `subscribe` as a Socket.IO event (`42[…]`).
            let open = next_text(&mut ws).await?;
            if !open.starts_with('0') {
                bail!("expected the Engine.IO open packet, got {open}");
            }
            ws.send(Message::Text("40".into())).await?;
            let connect = next_text(&mut ws).await?;
            if !connect.starts_with("40") {
                bail!("namespace connect refused: {connect}");
            }
            ws.send(Message::Text(r#"42["subscribe","*"]"#.into()))
                .await?;
        }
    }
    Ok(ws)
}

fn clients_main() -> Result<()> {
    let url = arg("--url").context("--url")?;
    let n: usize = arg("--clients").context("--clients")?.parse()?;
    let filters: usize = arg("--filters")
        .map(|f| f.parse())
        .transpose()?
        .unwrap_or(0);
    let transport = Transport::parse(arg("--transport"))?;
    if filters > 0 && transport != Transport::Ws {
        bail!("--filters is measured with --transport ws only");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let received = Arc::new(AtomicU64::new(0));
        let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let histogram = Arc::new(Histogram::new());
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let filter = (filters > 0).then(|| format!("data.i >= -{}", i % filters));
            let mut ws = open_client(&url, transport, filter.as_deref())
                .await
                .with_context(|| format!("client {i} connects"))?;
            let received = received.clone();
            let counting = counting.clone();
            let histogram = histogram.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    if transport == Transport::SocketIo && text.as_str() == "2" {
                        // Engine.IO ping.
                        if ws.send(Message::Text("3".into())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    let Some(pos) = text.find(r#""t":"#) else {
                        continue;
                    };
                    if !counting.load(Ordering::Relaxed) {
                        continue;
                    }
                    let digits: String = text[pos + 4..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let Ok(t) = digits.parse::<u64>() {
                        received.fetch_add(1, Ordering::Relaxed);
                        histogram.record(now_micros().saturating_sub(t));
                    }
                }
            }));
        }
        println!("connected");
        std::io::stdout().flush()?;
        let stdin = BufReader::new(std::io::stdin());
        for line in stdin.lines() {
            let line = line?;
            match line.trim() {
                "start" => {
                    histogram.clear();
                    received.store(0, Ordering::Relaxed);
                    counting.store(true, Ordering::Relaxed);
                }
                "stop" => {
                    counting.store(false, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    println!(
                        "{} {} {}",
                        received.load(Ordering::Relaxed),
                        histogram.percentile(0.50),
                        histogram.percentile(0.99)
                    );
                    std::io::stdout().flush()?;
                }
                _ => break,
            }
        }
        for t in tasks {
            t.abort();
        }
        Ok(())
    })
}

// ---------- bench (parent process) ----------

struct Row {
    clients: usize,
    filters: usize,
    evaluations_per_s: f64,
    received: f64,
    runtime_cpu: f64,
    kafka_cpu: f64,
    load: f64,
    stages: Vec<(u64, u64)>,
    writes: u64,
    rate: u64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_per_conn_kib: f64,
    bridge_cpu: f64,
    clients_cpu: f64,
    write_p50: f64,
    write_p99: f64,
    expected_per_s: f64,
    delivered_pct: f64,
    elapsed: f64,
}

fn bench_main() -> Result<()> {
    let seconds: u64 = arg("--seconds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let scenarios: Vec<(usize, u64, usize)> = arg("--scenarios")
        .unwrap_or_else(|| "19000x13,10000x25,10000x50,1000x500,1000x2000".into())
        .split(',')
        .map(|s| {
            let (c, rest) = s
                .split_once('x')
                .context("scenario is CLIENTSxRATE[fFILTERS]")?;
            let (r, f) = rest.split_once('f').unwrap_or((rest, "0"));
            Ok((c.parse()?, r.parse()?, f.parse()?))
        })
        .collect::<Result<_>>()?;
    // `--pin BRIDGE_CPUS:CLIENT_CPUS`: every thread of this process (set before any is started,
    // so all inherit it) on the first list, the client process on the second.
    let pin = arg("--pin")
        .map(|p| {
            p.split_once(':')
                .map(|(b, c)| (b.to_string(), c.to_string()))
                .context("--pin is BRIDGE_CPUS:CLIENT_CPUS, e.g. 0:1")
        })
        .transpose()?;
    if let Some((bridge_cpus, _)) = &pin {
        let status = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                bridge_cpus,
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .context("taskset")?;
        if !status.success() {
            bail!("taskset failed");
        }
    }
    let client_cpus = pin.map(|p| p.1);
    let transport = Transport::parse(arg("--transport"))?;
    eventstream_dataplane::relay::metrics::STAGES.enable();
    let kafka = eventstream_testkit::MockKafka::new(1)?;
    kafka.create_topic("bench", 6, 1)?;
    let bootstrap = kafka.bootstrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let config = DataplaneConfig::from_yaml(&format!(
            "stream: {{ namespace: bench, name: fanout }}\n\
             kafka: {{ bootstrapServers: '{bootstrap}', properties: {{ fetch.wait.max.ms: '5' }} }}\n\
             topic: bench\n\
             server: {{ listen: '127.0.0.1:0' }}\n\
             ingest: {{ enabled: false }}\n\
             websocket: {{ maxConnections: 100000, queueMessages: 1024 }}\n"
        ))?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let registry = prometheus::Registry::new();
        let running = eventstream_dataplane::bridge::start(config, registry.clone(), shutdown.clone()).await?;
        let url = match transport {
            Transport::Ws => format!("ws://{}/ws", running.local_addr),
            Transport::SocketIo => format!(
                "ws://{}/socket.io/?EIO=4&transport=websocket",
                running.local_addr
            ),
        };
        let producer: FutureProducer = eventstream_testkit::kafka::producer_config(&bootstrap)
            .set("linger.ms", "1")
            .create()?;
        let mut rows = Vec::new();
        for (clients, rate, filters) in &scenarios {
            rows.push(
                scenario(
                    &Target {
                        url: &url,
                        transport,
                    },
                    (*clients, *rate, *filters),
                    seconds,
                    &producer,
                    &registry,
                    client_cpus.as_deref(),
                )
                .await?,
            );
        }
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), running.task).await;
        Ok::<_, anyhow::Error>(rows)
    })?;
    println!();
    println!(
        "| clients | distinct filters | filter evaluations/s | msgs/s produced | deliveries/s offered | deliveries/s measured | delivered | e2e p50 | e2e p99 | bridge RSS per idle connection | bridge+broker CPU | clients CPU | bridge Kafka→write p50 / p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in rows.iter().enumerate() {
        // RSS per connection is only meaningful in a fresh process: later scenarios reuse memory
        // the allocator kept from earlier ones.
        let rss = if i == 0 {
            format!("{:.1} KiB", r.rss_per_conn_kib)
        } else {
            "–".to_string()
        };
        println!(
            "| {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.2}% | {:.1} ms | {:.1} ms | {} | {:.2} cores | {:.2} cores | ≤{} / ≤{} ms |",
            r.clients,
            r.filters,
            r.evaluations_per_s,
            r.rate,
            r.expected_per_s,
            r.deliveries_per_s,
            r.delivered_pct,
            r.p50_ms,
            r.p99_ms,
            rss,
            r.bridge_cpu,
            r.clients_cpu,
            r.write_p50,
            r.write_p99
        );
    }
    println!();
    println!(
        "| clients | msgs/s | deliveries | bridge Tokio workers | librdkafka + mock broker | clients | load avg (1 min) | bridge workers µs/delivery | clients µs/delivery | deliveries per socket write |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let per = |cores: f64| {
            if r.received > 0.0 {
                cores * 1e6 / (r.received / r.elapsed)
            } else {
                0.0
            }
        };
        println!(
            "| {} | {} | {:.0} | {:.2} cores | {:.2} cores | {:.2} cores | {:.1} | {:.2} | {:.2} | {:.2} |",
            r.clients,
            r.rate,
            r.received,
            r.runtime_cpu,
            r.kafka_cpu,
            r.clients_cpu,
            r.load,
            per(r.runtime_cpu),
            per(r.clients_cpu),
            r.received / (r.writes.max(1) as f64),
        );
    }
    println!();
    println!(
        "| clients | msgs/s | Kafka → consumed p50 / p99 | consumed → offered to all (per batch) p50 / p99 | consumed → taken by writer p50 / p99 | taken → flushed (per write) p50 / p99 | e2e (client read) p50 / p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |us: u64| us as f64 / 1000.0;
    for r in &rows {
        let st = &r.stages;
        println!(
            "| {} | {} | {:.0} / {:.0} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.3} / {:.3} ms | {:.1} / {:.1} ms |",
            r.clients,
            r.rate,
            ms(st[0].0),
            ms(st[0].1),
            ms(st[1].0),
            ms(st[1].1),
            ms(st[2].0),
            ms(st[2].1),
            ms(st[3].0),
            ms(st[3].1),
            r.p50_ms,
            r.p99_ms,
        );
    }
    println!(
        "\n{seconds} s per scenario; clients: {} ({}); broker: librdkafka mock cluster in the bridge process; clients: one child process (1 thread); pinning: {}; {} CPUs.",
        transport.name(),
        match transport {
            Transport::Ws => "protocol v1 JSON on /ws",
            Transport::SocketIo =>
                "Socket.IO v4 over WebSocket on /socket.io/; the writer stage ends at the hand-off to socketioxide",
        },
        arg("--pin")
            .map(|p| format!(
                "bridge process on CPU {}, clients on CPU {}",
                p.split(':').next().unwrap_or(""),
                p.split(':').nth(1).unwrap_or("")
            ))
            .unwrap_or_else(|| "none".into()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    Ok(())
}

/// Cumulative buckets of the bridge's own latency histogram (Kafka timestamp → socket write).
/// A metric's value summed over its label sets.
fn metric_sum(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().value())
        .sum()
}

fn bridge_buckets(registry: &prometheus::Registry) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    for family in registry.gather() {
        if family.name() != "eventstream_delivery_latency_seconds" {
            continue;
        }
        for metric in family.get_metric() {
            for b in metric.get_histogram().get_bucket() {
                out.push((b.upper_bound(), b.cumulative_count()));
            }
        }
    }
    out
}

/// Quantile `q` of the difference of two cumulative bucket snapshots, as a bucket bound in ms.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let total = after.last().map(|b| b.1).unwrap_or(0) - before.last().map(|b| b.1).unwrap_or(0);
    if total == 0 {
        return 0.0;
    }
    let rank = (total as f64 * q).ceil() as u64;
    for (i, (le, count)) in after.iter().enumerate() {
        let base = before.get(i).map(|b| b.1).unwrap_or(0);
        if count - base >= rank {
            return le * 1000.0;
        }
    }
    f64::INFINITY
}

/// Where the clients connect, and as what.
struct Target<'a> {
    url: &'a str,
    transport: Transport,
}

async fn scenario(
    target: &Target<'_>,
    (clients, rate, filters): (usize, u64, usize),
    seconds: u64,
    producer: &FutureProducer,
    registry: &prometheus::Registry,
    client_cpus: Option<&str>,
) -> Result<Row> {
    let (url, transport) = (target.url, target.transport);
    let pid = std::process::id();
    let before = rss_kib(pid);
    let exe = std::env::current_exe()?;
    let mut command = match client_cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = command
        .args([
            "--role",
            "clients",
            "--url",
            url,
            "--clients",
            &clients.to_string(),
            "--transport",
            transport.name(),
            "--filters",
            &filters.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("child stdout")?);
    let mut stdin = child.stdin.take().context("child stdin")?;
    let mut line = String::new();
    let read_line =
        |out: &mut BufReader<std::process::ChildStdout>, line: &mut String| -> Result<()> {
            line.clear();
            if out.read_line(line)? == 0 {
                bail!("client process ended early");
            }
            Ok(())
        };
    tokio::task::block_in_place(|| read_line(&mut out, &mut line))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let rss_per_conn = after.saturating_sub(before) as f64 / clients as f64;

    let child_pid = child.id();
    let (bridge_cpu0, clients_cpu0) = (cpu_seconds(pid), cpu_seconds(child_pid));
    let buckets_before = bridge_buckets(registry);
    let stages = &eventstream_dataplane::relay::metrics::STAGES;
    let stage_list = [&stages.kafka, &stages.fanout, &stages.queue, &stages.write];
    let stages_before: Vec<Vec<u64>> = stage_list.iter().map(|h| h.snapshot()).collect();
    let (runtime0, kafka0) = thread_cpu_seconds(pid);
    let evaluations0 = metric_sum(registry, "eventstream_ws_filter_evaluations_total");
    writeln!(stdin, "start")?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = rate * seconds;
    let mut next = tokio::time::Instant::now();
    for i in 0..total {
        let payload = format!(
            r#"{{"t":{},"i":{i},"pad":"{}"}}"#,
            now_micros(),
            "x".repeat(100)
        );
        let key = format!("k{}", i % 64);
        let _ = producer.send_result(FutureRecord::to("bench").key(&key).payload(&payload));
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    producer.flush(Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let bridge_cpu = (cpu_seconds(pid) - bridge_cpu0) / elapsed;
    let (runtime1, kafka1) = thread_cpu_seconds(pid);
    let load = load_average();
    let stage_quantiles: Vec<(u64, u64)> = stage_list
        .iter()
        .zip(&stages_before)
        .map(|(h, before)| {
            let after = h.snapshot();
            let q = |q| {
                eventstream_dataplane::relay::metrics::StageHistogram::quantile(before, &after, q).0
            };
            (q(0.50), q(0.99))
        })
        .collect();
    // Writes with at least one event, from the `write` stage's count.
    let writes = eventstream_dataplane::relay::metrics::StageHistogram::quantile(
        &stages_before[3],
        &stage_list[3].snapshot(),
        0.5,
    )
    .1;
    let buckets_after = bridge_buckets(registry);
    let write_p50 = bucket_quantile(&buckets_before, &buckets_after, 0.50);
    let write_p99 = bucket_quantile(&buckets_before, &buckets_after, 0.99);
    let clients_cpu = (cpu_seconds(child_pid) - clients_cpu0) / elapsed;
    let evaluations =
        metric_sum(registry, "eventstream_ws_filter_evaluations_total") - evaluations0;
    writeln!(stdin, "stop")?;
    tokio::task::block_in_place(|| read_line(&mut out, &mut line))?;
    let mut parts = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    let (received, p50, p99) = (
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
    );
    writeln!(stdin, "quit")?;
    let _ = child.wait();
    // Let the bridge notice the closed connections before the next scenario.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Row {
        clients,
        filters,
        evaluations_per_s: evaluations / elapsed,
        received,
        runtime_cpu: (runtime1 - runtime0) / elapsed,
        kafka_cpu: (kafka1 - kafka0) / elapsed,
        load,
        stages: stage_quantiles,
        writes,
        elapsed,
        rate,
        deliveries_per_s: received / elapsed,
        delivered_pct: 100.0 * received / (total as f64 * clients as f64),
        p50_ms: p50 / 1000.0,
        p99_ms: p99 / 1000.0,
        rss_per_conn_kib: rss_per_conn,
        bridge_cpu,
        clients_cpu,
        write_p50,
        write_p99,
        expected_per_s: (rate * clients as u64) as f64,
    })
}
