//! Sink throughput: prints rows/s per batch size and payload size, against a throw-away
//! PostgreSQL 15 on this machine.
//!
//! ```text
//! cargo run --release -p eventstream-dataplane --example sink_bench -- \
//!     [--rows 200000] [--batches 100,1000,5000,20000] [--payload 200] [--durable] \
//!     [--mode writer|e2e|both] [--no-primary-key] [--sink-modes append,upsert] [--keys 50000]
//! ```
//!
//! - `writer`: batches built in memory and written by the sink's own writer (offset fence, binary
//!   COPY, offsets upsert, one transaction per batch, one batch at a time): the database path.
//! - `e2e`: the whole sink in process (`sink::run_with`) reading a librdkafka mock cluster filled
//!   beforehand, timed from the first row to the last, as seen by polling the table.
//!
//! `--sink-modes` runs each measurement for the append table, the current-state table
//! (`mode: Upsert`: `COPY` into a staging table, one `INSERT … ON CONFLICT DO UPDATE … WHERE` per
//! batch), or both. Records carry `--keys` distinct keys in turn, so with the default 50 000 keys
//! a batch of up to 20 000 records has no key twice and every record is one row change.
//!
//! `--durable` keeps `fsync` and `synchronous_commit` on (the default test server has them off).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventstream_crds::config::DataplaneConfig;
use eventstream_crds::v1alpha1::{PayloadFormat, SinkMode, Timescale, UpsertSpec};
use eventstream_dataplane::sink::batch::{Batch, Slice};
use eventstream_dataplane::sink::connect::Endpoint;
use eventstream_dataplane::sink::dead_letter::DeadLetters;
use eventstream_dataplane::sink::metrics::SinkMetrics;
use eventstream_dataplane::sink::record::{Entry, Record};
use eventstream_dataplane::sink::schema::TableName;
use eventstream_dataplane::sink::writer::{Target, Writer};
use eventstream_dataplane::sink::{SinkOptions, run_with};
use eventstream_testkit::{MockKafka, TestPostgres};
use tokio_util::sync::CancellationToken;

struct Args {
    rows: usize,
    batches: Vec<usize>,
    payload: usize,
    durable: bool,
    mode: String,
    primary_key: bool,
    sink_modes: Vec<SinkMode>,
    keys: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        rows: 200_000,
        batches: vec![100, 1000, 5000, 20_000],
        payload: 200,
        durable: false,
        mode: "both".into(),
        primary_key: true,
        sink_modes: vec![SinkMode::Append, SinkMode::Upsert],
        keys: 50_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--rows" => a.rows = value()?.parse()?,
            "--payload" => a.payload = value()?.parse()?,
            "--batches" => {
                a.batches = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--mode" => a.mode = value()?,
            "--durable" => a.durable = true,
            "--no-primary-key" => a.primary_key = false,
            "--keys" => a.keys = value()?.parse::<usize>()?.max(1),
            "--sink-modes" => {
                a.sink_modes = value()?
                    .split(',')
                    .map(|m| match m {
                        "append" => Ok(SinkMode::Append),
                        "upsert" => Ok(SinkMode::Upsert),
                        other => Err(anyhow::anyhow!("unknown sink mode {other}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// A JSON event of exactly `size` bytes (at least ~60).
fn payload(i: usize, size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"seq":{i},"sessionId":"s-{}","eventType":"frame","speed":{},"pad":""#,
        i % 1000,
        i % 300
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = head.into_bytes();
    out.extend(std::iter::repeat_n(b'x', pad));
    out.extend_from_slice(b"\"}");
    out
}

fn reset(pg: &TestPostgres, primary_key: bool, mode: SinkMode) -> anyhow::Result<()> {
    pg.psql(
        "postgres",
        "DROP TABLE IF EXISTS frames; DROP TABLE IF EXISTS eventstream_offsets",
    )?;
    if !primary_key && mode == SinkMode::Append {
        pg.psql(
            "postgres",
            r#"CREATE TABLE frames ("partition" integer NOT NULL, "offset" bigint NOT NULL, key text,
               ts timestamptz NOT NULL, payload jsonb, headers jsonb,
               ingested_at timestamptz NOT NULL DEFAULT now())"#,
        )?;
    }
    Ok(())
}

async fn bench_writer(
    pg: &TestPostgres,
    a: &Args,
    batch_rows: usize,
    mode: SinkMode,
) -> anyhow::Result<f64> {
    reset(pg, a.primary_key, mode)?;
    let registry = prometheus::Registry::new();
    let metrics = SinkMetrics::register(&registry, "bench/frames")?;
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", "127.0.0.1:9");
    let dlq = DeadLetters::new(kafka, "frames.dlq", "frames")?;
    let target = Target {
        stream: "bench/frames".into(),
        topic: "frames".into(),
        table: TableName::parse("frames"),
        timescale: Timescale::Auto,
        payload: PayloadFormat::Json,
        offset_reset: None,
        upsert: (mode == SinkMode::Upsert).then(UpsertSpec::default),
    };
    let mut w = Writer::new(Endpoint::parse(&pg.url(), "url")?, target, dlq, metrics);
    w.connect().await?;
    let partitions = 8;
    let mut next = vec![0i64; partitions];
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut batches = Vec::new();
    let mut i = 0;
    while i < a.rows {
        let mut slices: BTreeMap<i32, Slice> = BTreeMap::new();
        for _ in 0..batch_rows.min(a.rows - i) {
            let p = i % partitions;
            let offset = next[p];
            next[p] += 1;
            let slice = slices.entry(p as i32).or_insert_with(|| Slice {
                from: offset,
                entries: Vec::new(),
            });
            slice.entries.push(Entry::Row(Record {
                partition: p as i32,
                offset,
                key: Some(format!("s-{}", i % a.keys).into_bytes()),
                payload: Some(payload(i, a.payload)),
                headers: vec![],
                timestamp_ms: now_ms + i as i64,
            }));
            i += 1;
        }
        batches.push(Batch {
            generation: 0,
            slices,
        });
    }
    let started = Instant::now();
    for batch in &batches {
        w.write(batch).await?;
    }
    Ok(a.rows as f64 / started.elapsed().as_secs_f64())
}

/// Rows committed so far, through one long-lived connection (a connection per poll would fork a
/// backend every 10 ms and compete with the sink for the two cores).
async fn count(client: &tokio_postgres::Client) -> i64 {
    // The positions table, not count(*): without poison records the two are equal, and the
    // positions table is a handful of rows.
    client
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM eventstream_offsets",
            &[],
        )
        .await
        .map_or(-1, |r| r.get(0))
}

async fn bench_e2e(
    pg: &TestPostgres,
    a: &Args,
    batch_rows: usize,
    mode: SinkMode,
) -> anyhow::Result<f64> {
    reset(pg, a.primary_key, mode)?;
    // The mock cluster keeps 5 MiB per partition; stay well under it.
    let partitions = ((a.rows * (a.payload + 100)) / (3 << 20) + 1).max(4) as i32;
    let kafka = MockKafka::new(1)?;
    kafka.create_topic("frames", partitions, 1)?;
    kafka.create_topic("frames.dlq", 1, 1)?;
    let records: Vec<(Option<String>, Vec<u8>)> = (0..a.rows)
        .map(|i| (Some(format!("s-{}", i % a.keys)), payload(i, a.payload)))
        .collect();
    for chunk in records.chunks(50_000) {
        eventstream_testkit::produce(&kafka.bootstrap(), "frames", chunk).await?;
    }
    let port = eventstream_testkit::free_port()?;
    let config = DataplaneConfig::from_yaml(&format!(
        "stream: {{ namespace: bench, name: frames }}
kafka: {{ bootstrapServers: '{}', properties: {{ fetch.wait.max.ms: '5' }} }}
topic: frames
server: {{ listen: '127.0.0.1:{port}' }}
sink: {{ table: frames, maxRows: {batch_rows}, maxDelay: 1s, deadLetterTopic: frames.dlq, consumerGroup: bench, mode: {mode:?} }}
",
        kafka.bootstrap()
    ))?;
    let shutdown = CancellationToken::new();
    let url = pg.url();
    let sink = tokio::spawn(run_with(
        config,
        SinkOptions::new(url.clone()),
        prometheus::Registry::new(),
        shutdown.clone(),
    ));
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first: Option<(Instant, i64)> = None;
    let rate = loop {
        let n = count(&client).await;
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some((now, n));
        }
        if n >= a.rows as i64 {
            let (t0, n0) = first.unwrap_or((now, 0));
            let secs = now.duration_since(t0).as_secs_f64().max(1e-3);
            break (n - n0) as f64 / secs;
        }
        anyhow::ensure!(now < deadline, "only {n} of {} rows after 300 s", a.rows);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    shutdown.cancel();
    sink.await??;
    drop(kafka);
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let pg = TestPostgres::builder().durable(a.durable).start()?;
    println!(
        "rows={} payload={}B durable={} primary_key={} keys={} (PostgreSQL 15 on this machine)",
        a.rows, a.payload, a.durable, a.primary_key, a.keys
    );
    println!("| path | sink mode | batch rows | records/s |");
    println!("|---|---|---:|---:|");
    for &b in &a.batches {
        for &m in &a.sink_modes {
            let name = format!("{m:?}");
            if a.mode == "writer" || a.mode == "both" {
                let r = bench_writer(&pg, &a, b, m).await?;
                println!("| writer | {name} | {b} | {r:.0} |");
            }
            if a.mode == "e2e" || a.mode == "both" {
                let r = bench_e2e(&pg, &a, b, m).await?;
                println!("| e2e | {name} | {b} | {r:.0} |");
            }
        }
    }
    Ok(())
}
