//! Load program for HTTP ingest: prints requests/s, events/s and latency percentiles for
//! `POST /produce` and `POST /produce/batch`.
//!
//! Everything runs in this one process on this machine: the librdkafka mock cluster (the
//! broker), the ingest server (the real `Ingest` routes behind `server::serve`), and a lean
//! HTTP/1.1 keep-alive load generator (one request in flight per connection, raw sockets, so
//! the client costs as little CPU as possible). Each 200 is a durable acknowledgement
//! (idempotent producer, `acks=all`) of the mock broker.
//!
//! ```sh
//! cargo run --release -p eventstream-dataplane --example ingest_bench -- --seconds 10
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use eventstream_crds::config::DataplaneConfig;
use eventstream_dataplane::ingest::Ingest;
use eventstream_dataplane::server::{self, Readiness};
use eventstream_testkit::MockKafka;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "HTTP ingest load program")]
struct Args {
    /// Seconds measured per scenario (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections for `/produce`.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Concurrent connections for `/produce/batch`.
    #[arg(long, default_value_t = 8)]
    batch_connections: usize,
    /// Events per batch request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Producer `linger` (ingest.linger).
    #[arg(long, default_value = "5ms")]
    linger: String,
    /// Topic partitions.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Only run these scenarios (`single`, `batch`).
    #[arg(long, value_delimiter = ',', default_value = "single,batch")]
    only: Vec<String>,
}

fn event(i: usize) -> String {
    format!(
        r#"{{"eventType":"like_clicked","userId":"user-{}","timestamp":"2024-01-01T12:00:00.000Z","screen":"main_post","n":{i}}}"#,
        i % 1000
    )
}

fn request(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Totals {
    latencies_us: Vec<u32>,
    ok: u64,
    errors: u64,
}

/// One keep-alive connection sending `requests` round-robin until `end`; latencies are kept
/// only after `measure_from`.
async fn connection(
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    offset: usize,
    measure_from: Instant,
    end: Instant,
) -> std::io::Result<Totals> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut totals = Totals {
        latencies_us: Vec::with_capacity(200_000),
        ok: 0,
        errors: 0,
    };
    let mut i = offset;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        stream.write_all(&requests[i % requests.len()]).await?;
        i += 1;
        let status = read_response(&mut stream, &mut buf).await?;
        if now >= measure_from {
            totals
                .latencies_us
                .push(now.elapsed().as_micros().min(u32::MAX as u128) as u32);
            if status == 200 {
                totals.ok += 1;
            } else {
                totals.errors += 1;
            }
        }
    }
    Ok(totals)
}

/// Reads one HTTP/1.1 response (with a content-length) and returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        let Some(head_end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..head_end]).unwrap_or_default();
        let status = head
            .get(9..12)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if filled >= head_end + 4 + length {
            return Ok(status);
        }
    }
}

struct Row {
    name: String,
    connections: usize,
    requests_per_s: f64,
    events_per_s: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    errors: u64,
}

async fn run(
    name: &str,
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    events_per_request: usize,
    connections: usize,
    seconds: u64,
) -> Row {
    let requests = Arc::new(requests);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(1);
    let end = measure_from + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(connection(addr, requests.clone(), c * 7, measure_from, end)))
        .collect();
    let mut latencies = Vec::new();
    let (mut ok, mut errors) = (0u64, 0u64);
    for t in tasks {
        match t.await {
            Ok(Ok(totals)) => {
                latencies.extend(totals.latencies_us);
                ok += totals.ok;
                errors += totals.errors;
            }
            Ok(Err(e)) => {
                eprintln!("connection failed: {e}");
                errors += 1;
            }
            Err(e) => {
                eprintln!("connection task failed: {e}");
                errors += 1;
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[i]) / 1000.0
    };
    let secs = seconds as f64;
    Row {
        name: name.to_string(),
        connections,
        requests_per_s: ok as f64 / secs,
        events_per_s: (ok as usize * events_per_request) as f64 / secs,
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        p999: pct(0.999),
        max: latencies
            .last()
            .map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
        errors,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kafka = MockKafka::new(1)?;
    kafka.create_topic("bench", args.partitions, 1)?;
    let config = DataplaneConfig::from_yaml(&format!(
        "stream: {{ namespace: bench, name: ingest }}
kafka: {{ bootstrapServers: '{}' }}
topic: bench
ingest:
  keyField: /userId
  requiredFields: [eventType, userId, timestamp]
  linger: {}
  maxBatchItems: {}
",
        kafka.bootstrap(),
        args.linger,
        args.batch.max(1000),
    ))?;
    let registry = prometheus::Registry::new();
    let ingest = Ingest::with_jwt_key(&config, &registry, None)?;
    let router = ingest
        .routes()
        .merge(server::ops_routes(registry, Readiness::default()));
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(server::serve(listener, router, shutdown.clone()));

    let mut rows = Vec::new();
    if args.only.iter().any(|o| o == "single") {
        let requests = (0..1000).map(|i| request("/produce", &event(i))).collect();
        rows.push(
            run(
                "POST /produce",
                addr,
                requests,
                1,
                args.connections,
                args.seconds,
            )
            .await,
        );
    }
    if args.only.iter().any(|o| o == "batch") {
        let requests = (0..50)
            .map(|r| {
                let items: Vec<String> =
                    (0..args.batch).map(|i| event(r * args.batch + i)).collect();
                request("/produce/batch", &format!("[{}]", items.join(",")))
            })
            .collect();
        rows.push(
            run(
                &format!("POST /produce/batch ({} events)", args.batch),
                addr,
                requests,
                args.batch,
                args.batch_connections,
                args.seconds,
            )
            .await,
        );
    }

    println!(
        "\n| scenario | connections | requests/s | events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            r.name,
            r.connections,
            r.requests_per_s,
            r.events_per_s,
            r.p50,
            r.p90,
            r.p99,
            r.p999,
            r.max,
            r.errors
        );
    }
    println!(
        "\nlinger {}, {} partitions, {}s measured per scenario after 1s warm-up; broker: librdkafka mock cluster in this process",
        args.linger, args.partitions, args.seconds
    );

    shutdown.cancel();
    ingest
        .close(Instant::now() + Duration::from_secs(5))
        .await?;
    let _ = served.await;
    drop(kafka);
    Ok(())
}
