//! `eventstream-operator`: reconciles EventStream resources into Kafka topics, ConfigMaps,
//! bridge and sink Deployments, Services and status. All logic lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use eventstream_operator::OperatorConfig;
use eventstream_operator::config::DEFAULT_DATAPLANE_IMAGE;
use eventstream_operator::controller::{self, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "eventstream-operator",
    version,
    about = "EventStream Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print the EventStream CRD as YAML.
    Crd,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Image of the dataplane pods (a spec may override it per workload).
    #[arg(long, env = "EVENTSTREAM_DATAPLANE_IMAGE", default_value = DEFAULT_DATAPLANE_IMAGE)]
    dataplane_image: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "EVENTSTREAM_NAMESPACE")]
    namespace: Option<String>,
    /// Kafka bootstrap servers for EventStreams that do not name their own.
    #[arg(long, env = "EVENTSTREAM_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "EVENTSTREAM_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    listen: SocketAddr,
    /// Disable leader election (only for a single replica).
    #[arg(long, env = "EVENTSTREAM_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "EVENTSTREAM_LEASE_NAME",
        default_value = "eventstream-operator"
    )]
    lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Timeout of each Kafka admin request, in seconds.
    #[arg(long, env = "EVENTSTREAM_KAFKA_TIMEOUT_SECONDS", default_value_t = 10)]
    kafka_timeout_seconds: u64,
    /// Periodic re-check of every stream (topic drift, lag), in seconds.
    #[arg(long, env = "EVENTSTREAM_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// A label (key=value) for every ServiceMonitor and PodMonitor the operator creates, e.g.
    /// release=kube-prometheus-stack; repeat the flag, or separate with commas in the env var.
    #[arg(
        long = "monitor-label",
        env = "EVENTSTREAM_MONITOR_LABELS",
        value_delimiter = ',',
        value_parser = eventstream_operator::config::parse_label
    )]
    monitor_labels: Vec<(String, String)>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "eventstream-operator".into())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", eventstream_crds::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let args = *args;
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .init();
            let config = OperatorConfig {
                dataplane_image: args.dataplane_image,
                kafka_bootstrap: args.kafka_bootstrap,
                namespace: args.namespace,
                kafka_timeout: Duration::from_secs(args.kafka_timeout_seconds),
                resync: Duration::from_secs(args.resync_seconds),
                monitor_labels: args.monitor_labels.into_iter().collect(),
                ..OperatorConfig::default()
            };
            let lease = (!args.no_leader_election).then(|| {
                let ns = args
                    .lease_namespace
                    .or_else(|| {
                        std::fs::read_to_string(
                            "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                        )
                        .ok()
                    })
                    .unwrap_or_else(|| "default".into());
                (ns.trim().to_string(), args.lease_name)
            });
            let opts = RunOptions {
                listen: args.listen,
                lease,
                identity: args.identity.unwrap_or_else(hostname),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(controller::run(config, opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
