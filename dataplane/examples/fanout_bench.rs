//! Fan-out benchmark: K WebSocket clients over loopback on one in-process bridge fed by an
//! in-process Kafka (librdkafka's mock cluster, which answers fetches at once).
//!
//! The clients run in a child process (this same binary with `--role clients`), so the bridge
//! process's RSS is the bridge's own: RSS per idle connection is measured there. Prints one
//! table row per scenario: deliveries/s, end-to-end p50/p99 (producer wall clock → client
//! receive, same machine clock), RSS per connection.
//!
//! ```sh
//! cargo run --release -p eventstream-dataplane --example fanout_bench
//! cargo run --release -p eventstream-dataplane --example fanout_bench -- --scenarios 1000x500,10000x50 --seconds 10
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

fn clients_main() -> Result<()> {
    let url = arg("--url").context("--url")?;
    let n: usize = arg("--clients").context("--clients")?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let received = Arc::new(AtomicU64::new(0));
        let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let samples: Arc<parking_lot::Mutex<Vec<u32>>> = Default::default();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .with_context(|| format!("client {i} connects"))?;
            ws.send(Message::Text(
                r#"{"type":"subscribe","channel":"*"}"#.into(),
            ))
            .await?;
            let received = received.clone();
            let counting = counting.clone();
            let samples = samples.clone();
            tasks.push(tokio::spawn(async move {
                let mut local: Vec<u32> = Vec::new();
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
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
                        local.push(now_micros().saturating_sub(t).min(u32::MAX as u64) as u32);
                        if local.len() >= 4096 {
                            samples.lock().extend(local.drain(..));
                        }
                    }
                }
                samples.lock().extend(local);
            }));
        }
        println!("connected");
        std::io::stdout().flush()?;
        let stdin = BufReader::new(std::io::stdin());
        for line in stdin.lines() {
            let line = line?;
            match line.trim() {
                "start" => {
                    samples.lock().clear();
                    received.store(0, Ordering::Relaxed);
                    counting.store(true, Ordering::Relaxed);
                }
                "stop" => {
                    counting.store(false, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let mut all = std::mem::take(&mut *samples.lock());
                    all.sort_unstable();
                    let pct = |q: f64| {
                        all.get(((all.len() as f64 - 1.0) * q) as usize)
                            .copied()
                            .unwrap_or(0)
                    };
                    println!(
                        "{} {} {}",
                        received.load(Ordering::Relaxed),
                        pct(0.50),
                        pct(0.99)
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
    rate: u64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_per_conn_kib: f64,
    expected_per_s: f64,
    delivered_pct: f64,
}

fn bench_main() -> Result<()> {
    let seconds: u64 = arg("--seconds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let scenarios: Vec<(usize, u64)> = arg("--scenarios")
        .unwrap_or_else(|| "1000x500,10000x50,19000x25".into())
        .split(',')
        .map(|s| {
            let (c, r) = s.split_once('x').context("scenario is CLIENTSxRATE")?;
            Ok((c.parse()?, r.parse()?))
        })
        .collect::<Result<_>>()?;
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
        let running = eventstream_dataplane::bridge::start(config, prometheus::Registry::new(), shutdown.clone()).await?;
        let url = format!("ws://{}/ws", running.local_addr);
        let producer: FutureProducer = eventstream_testkit::kafka::producer_config(&bootstrap)
            .set("linger.ms", "1")
            .create()?;
        let mut rows = Vec::new();
        for (clients, rate) in &scenarios {
            rows.push(scenario(&url, *clients, *rate, seconds, &producer).await?);
        }
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), running.task).await;
        Ok::<_, anyhow::Error>(rows)
    })?;
    println!();
    println!(
        "| clients | msgs/s produced | deliveries/s offered | deliveries/s measured | delivered | e2e p50 | e2e p99 | bridge RSS per connection |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}% | {:.1} ms | {:.1} ms | {:.1} KiB |",
            r.clients,
            r.rate,
            r.expected_per_s,
            r.deliveries_per_s,
            r.delivered_pct,
            r.p50_ms,
            r.p99_ms,
            r.rss_per_conn_kib
        );
    }
    println!(
        "\n{seconds} s per scenario; broker: librdkafka mock cluster in the bridge process; clients: one child process (1 thread); 2-core machine."
    );
    Ok(())
}

async fn scenario(
    url: &str,
    clients: usize,
    rate: u64,
    seconds: u64,
    producer: &FutureProducer,
) -> Result<Row> {
    let pid = std::process::id();
    let before = rss_kib(pid);
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "--role",
            "clients",
            "--url",
            url,
            "--clients",
            &clients.to_string(),
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
        rate,
        deliveries_per_s: received / elapsed,
        delivered_pct: 100.0 * received / (total as f64 * clients as f64),
        p50_ms: p50 / 1000.0,
        p99_ms: p99 / 1000.0,
        rss_per_conn_kib: rss_per_conn,
        expected_per_s: (rate * clients as u64) as f64,
    })
}
