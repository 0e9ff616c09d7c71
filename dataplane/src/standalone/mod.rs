//! `eventstream-dataplane standalone`: the whole product in one process, for a laptop.
//!
//! - [`broker`]: the embedded Kafka broker (librdkafka's mock cluster on a loopback port), or
//!   topics on an external one with `--kafka-bootstrap`.
//! - [`streams`]: which streams to serve, from flags or dataplane config files (pure).
//! - [`demo`]: `--demo`, a synthetic sim-racing telemetry stream.
//! - [`viewer`]: the stream viewer page at `/`, embedded in the binary, and `GET /streams`.
//!
//! Each stream is a [`StreamBridge`] (the same one `bridge` mode serves), nested in one server
//! whose `/metrics` merges the streams' registries ([`server::ops_routes_for`]). The first stream is served at the root (`/ws`, `/produce`, `/health`, as `docs/protocol.md`
//! says); every stream, the first included, also under `/streams/{name}/`. With `--postgres-url`
//! each stream also runs a sink; a stream whose config has an `alerts` section also runs its alert
//! evaluator in-process. `docs/standalone.md` is the user's guide.

pub mod broker;
pub mod demo;
pub mod streams;
pub mod viewer;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use eventstream_crds::config::{ENV_JWT_KEY, check_bootstrap};
use tokio_util::sync::CancellationToken;

use crate::bridge::StreamBridge;
use crate::server::{self, Readiness};
use broker::{EmbeddedBroker, TopicSpec};
use streams::{StreamFlags, StreamPlan};

/// Command-line arguments of `standalone`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address of the viewer page, /ws, /sse, /produce, /health and /metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Publish a synthetic sim-racing telemetry stream into the first stream.
    #[arg(long)]
    pub demo: bool,
    /// Demo events per second.
    #[arg(long, value_name = "N", default_value_t = demo::DEFAULT_RATE, value_parser = parse_rate)]
    pub demo_rate: f64,
    /// Serve a stream named NAME with topic NAME (repeatable). Without --stream and --config:
    /// one stream `telemetry`, keyed by /sessionId.
    #[arg(long = "stream", value_name = "NAME")]
    pub streams: Vec<String>,
    /// JSON pointer of the Kafka key (and so the channel) of the --stream streams.
    #[arg(long, value_name = "POINTER")]
    pub key_field: Option<String>,
    /// Serve the stream of a dataplane config file (repeatable; docs/config.md). Its `kafka`
    /// may be left out; standalone sets the broker and the listen address.
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Partitions of each topic standalone creates.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub partitions: i32,
    /// Use this Kafka (host:port[,host:port…]) instead of the embedded broker.
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_bootstrap: Option<String>,
    /// Also persist every stream into this PostgreSQL (postgres://user:password@host:port/db).
    #[arg(long, value_name = "URL")]
    pub postgres_url: Option<String>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 100_000.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate: give events per second, above 0 and at most 100000"
        )),
    }
}

/// Runs standalone until Ctrl-C or SIGTERM (a second Ctrl-C exits at once).
pub fn main(args: Args) -> anyhow::Result<()> {
    init_logging();
    let plans = streams::plan(&StreamFlags {
        names: args.streams.clone(),
        key_field: args.key_field.clone(),
        configs: args.configs.clone(),
        partitions: args.partitions,
        sink: args.postgres_url.is_some(),
    })?;
    if let Some(b) = &args.kafka_bootstrap {
        check_bootstrap(b).map_err(|e| anyhow::anyhow!("--kafka-bootstrap: {e}"))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args, plans))
}

/// Standalone's own default: warnings only, so the banner is what a new user reads
/// (`RUST_LOG=info` shows everything). librdkafka's warnings are left out by default: the
/// consumer setting standalone adds makes every producer warn that it ignores it.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,librdkafka=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {listen}: the address is in use (another standalone?); stop that process or pass --listen 127.0.0.1:PORT with a free port"
            )
        } else {
            anyhow::anyhow!("cannot listen on {listen}: {e}; pass --listen with an address of this machine")
        }
    })
}

/// Connects once, so a wrong URL or a stopped server is one clear error at start rather than
/// a sink retrying in the background.
async fn probe_postgres(url: &str) -> anyhow::Result<()> {
    use crate::sink::connect::{Endpoint, connect};
    let endpoint = Endpoint::parse(url, "--postgres-url")
        .map_err(|e| anyhow::anyhow!("{e}; write postgres://user:password@host:port/database"))?;
    let target = endpoint.describe();
    // The same connection code (and TLS settings: sslmode, sslrootcert, …) as the sink's.
    match tokio::time::timeout(Duration::from_secs(15), connect(&endpoint)).await {
        Ok(Ok((client, _tls))) => {
            drop(client);
            Ok(())
        }
        Ok(Err(e)) => anyhow::bail!(
            "cannot connect to PostgreSQL (--postgres-url): {e}; start PostgreSQL or fix the URL"
        ),
        Err(_) => anyhow::bail!(
            "cannot connect to PostgreSQL at {target} (--postgres-url): no answer within 15s; check the host and port"
        ),
    }
}

fn topics(plans: &[StreamPlan]) -> Vec<TopicSpec> {
    let mut out: Vec<TopicSpec> = Vec::new();
    let mut add = |name: &str, partitions: i32| {
        if !out.iter().any(|t| t.name == name) {
            out.push(TopicSpec {
                name: name.to_string(),
                partitions,
            });
        }
    };
    for p in plans {
        add(&p.config.topic, p.partitions);
        if let Some(sink) = &p.config.sink {
            add(&sink.dead_letter_topic, 1);
        }
        if let Some(alerts) = &p.config.alerts {
            add(&alerts.topic, 1);
            add(&alerts.state_topic, 1);
        }
    }
    out
}

/// A second Ctrl-C while shutting down exits at once.
fn exit_on_second_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        shutdown.cancelled().await;
        println!("stopping (press Ctrl-C again to exit at once)");
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted again: exiting without a clean shutdown");
            std::process::exit(130);
        }
    });
}

async fn run(args: Args, mut plans: Vec<StreamPlan>) -> anyhow::Result<()> {
    let shutdown = server::shutdown_on_signal();
    exit_on_second_signal(shutdown.clone());
    let listener = bind(args.listen).await?;
    let local = listener.local_addr().context("listening address")?;
    if let Some(url) = &args.postgres_url {
        probe_postgres(url).await?;
    }

    let topics = topics(&plans);
    let (embedded, bootstrap) = match &args.kafka_bootstrap {
        Some(b) => {
            for warning in broker::ensure_topics(b, &topics).await {
                eprintln!("warning: {warning}");
            }
            (None, b.clone())
        }
        None => {
            let broker = EmbeddedBroker::start(&topics)?;
            let b = broker.bootstrap().to_string();
            (Some(broker), b)
        }
    };
    let broker_info = viewer::BrokerInfo {
        embedded: embedded.is_some(),
        bootstrap: bootstrap.clone(),
        epoch: match &embedded {
            Some(_) => uuid::Uuid::now_v7().to_string(),
            None => format!("external:{bootstrap}"),
        },
    };
    for p in &mut plans {
        p.config.kafka.bootstrap_servers = bootstrap.clone();
        p.config.server.listen = local;
        if embedded.is_some() {
            // The mock broker holds a fetch for the whole wait even when records arrive; it is
            // in this process, so short polls are cheap and keep latency at a few ms.
            p.config
                .kafka
                .properties
                .entry("fetch.wait.max.ms".into())
                .or_insert_with(|| "5".into());
        }
    }

    let jwt_key = std::env::var(ENV_JWT_KEY).ok();
    let readiness = Readiness::default();
    let mut bridges = Vec::new();
    for p in &plans {
        let bridge = tokio::select! {
            b = StreamBridge::start(p.config.clone(), prometheus::Registry::new(), &readiness, shutdown.clone(), jwt_key.as_deref()) => b?,
            _ = shutdown.cancelled() => anyhow::bail!("interrupted while connecting to Kafka at {bootstrap}"),
        };
        bridges.push(bridge);
    }

    let mut app = Router::new();
    let mut infos = Vec::new();
    for (i, b) in bridges.iter().enumerate() {
        let prefix = format!("/streams/{}", b.config.stream.name);
        app = app.nest(&prefix, b.router.clone());
        if i == 0 {
            app = app.merge(b.router.clone());
        }
        infos.push(viewer::StreamInfo {
            config: b.config.clone(),
            prefix: if i == 0 { String::new() } else { prefix },
            demo: args.demo && i == 0,
            relay: b.relay.clone(),
        });
    }
    let registries = bridges.iter().map(|b| b.registry.clone()).collect();
    app = app
        .merge(viewer::routes(broker_info.clone(), infos))
        .merge(crate::server::ops_routes_for(registries, readiness.clone()));

    let demo_task = args.demo.then(|| {
        tokio::spawn(demo::run(
            plans[0].config.clone(),
            args.demo_rate,
            shutdown.clone(),
        ))
    });
    let (sink_failed_tx, mut sink_failed) = tokio::sync::mpsc::channel::<anyhow::Error>(4);
    let mut sinks = Vec::new();
    if let Some(url) = &args.postgres_url {
        for b in &bridges {
            let mut config = b.config.clone();
            // The sink's own ops server is not needed here: an ephemeral loopback port.
            config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            let options = crate::sink::SinkOptions::new(url.clone());
            let registry = b.registry.clone();
            // The sink cancels the token it is given when it ends: give it a child.
            let token = shutdown.child_token();
            let failed = sink_failed_tx.clone();
            let name = config.stream.name.clone();
            sinks.push(tokio::spawn(async move {
                if let Err(e) = crate::sink::run_with(config, options, registry, token).await {
                    let _ = failed
                        .send(e.context(format!("sink of stream {name}")))
                        .await;
                }
            }));
        }
    }
    for b in &bridges {
        if b.config.alerts.is_none() {
            continue;
        }
        let config = b.config.clone();
        let registry = b.registry.clone();
        let ready = readiness.register(&format!("alerts:{}", config.stream.name));
        let token = shutdown.child_token();
        let failed = sink_failed_tx.clone();
        let name = config.stream.name.clone();
        sinks.push(tokio::spawn(async move {
            if let Err(e) =
                crate::alerts::run_evaluator(config, &registry, ready, token.clone()).await
            {
                let _ = failed
                    .send(e.context(format!("alert evaluator of stream {name}")))
                    .await;
            }
        }));
    }
    drop(sink_failed_tx);

    print_banner(&args, local, &broker_info, &bridges);

    let grace = plans[0].config.server.shutdown_grace;
    let serve = server::serve(listener, app, shutdown.clone());
    tokio::pin!(serve);
    let mut failure = None;
    tokio::select! {
        result = &mut serve => result?,
        _ = shutdown.cancelled() => {
            if tokio::time::timeout(grace, &mut serve).await.is_err() {
                tracing::warn!(?grace, "connections still open after the grace period; exiting");
            }
        }
        Some(e) = sink_failed.recv() => {
            failure = Some(e);
            shutdown.cancel();
            let _ = tokio::time::timeout(grace, &mut serve).await;
        }
    }

    let deadline = Instant::now() + crate::bridge::FLUSH_TIMEOUT.min(grace);
    for b in bridges {
        b.close(deadline).await;
    }
    if let Some(task) = demo_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    for task in sinks {
        let _ = tokio::time::timeout(grace, task).await;
    }
    // Every Kafka client is gone: now the broker may stop.
    drop(embedded);
    match failure {
        Some(e) => Err(e),
        None => {
            println!("stopped");
            Ok(())
        }
    }
}

fn print_banner(
    args: &Args,
    local: SocketAddr,
    broker: &viewer::BrokerInfo,
    bridges: &[StreamBridge],
) {
    // 0.0.0.0 and :: are not addresses to open: show loopback.
    let shown = if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    };
    let http = format!("http://{shown}");
    let ws = format!("ws://{shown}");
    let mut out = String::new();
    out.push_str("EventStream standalone is running\n\n");
    out.push_str(&format!("  viewer    {http}/\n"));
    for (i, b) in bridges.iter().enumerate() {
        let c = &b.config;
        let prefix = if i == 0 {
            String::new()
        } else {
            format!("/streams/{}", c.stream.name)
        };
        let partitions = b.relay.hub.partitions().len();
        out.push_str(&format!(
            "  stream    {} (topic {}, {partitions} partitions)\n",
            c.stream.name, c.topic
        ));
        out.push_str(&format!("  ws        {ws}{prefix}/ws\n"));
        if c.ingest.enabled {
            out.push_str(&format!("  produce   {http}{prefix}/produce\n"));
        }
        if let Some(sink) = &c.sink {
            out.push_str(&format!("  postgres  table {}\n", sink.table));
        }
    }
    out.push_str(&format!(
        "  health    {http}/health   metrics {http}/metrics\n"
    ));
    if broker.embedded {
        out.push_str(&format!(
            "  kafka     {} (embedded broker in this process; any Kafka client can use it; keeps ~5 MiB per partition)\n",
            broker.bootstrap
        ));
    } else {
        out.push_str(&format!("  kafka     {} (external)\n", broker.bootstrap));
    }
    if args.demo {
        out.push_str(&format!(
            "  demo      sim-racing telemetry, {} events/s into {}\n",
            args.demo_rate, bridges[0].config.topic
        ));
    }
    if local.ip().is_unspecified() {
        out.push_str(&format!(
            "\n  listening on every interface ({local}): anyone who reaches this port can read and write the streams\n"
        ));
    }
    out.push_str("\nPress Ctrl-C to stop.\n");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
