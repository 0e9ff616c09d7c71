//! `eventstream-operator`: reconciles EventStream resources into Kafka topics, ConfigMaps,
//! bridge and sink Deployments, Services and status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Run {
        /// Image of the dataplane pods.
        #[arg(long, env = "EVENTSTREAM_DATAPLANE_IMAGE")]
        dataplane_image: Option<String>,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "EVENTSTREAM_NAMESPACE")]
        namespace: Option<String>,
        /// Kafka bootstrap servers for EventStreams that do not name their own.
        #[arg(long, env = "EVENTSTREAM_KAFKA_BOOTSTRAP")]
        kafka_bootstrap: Option<String>,
    },
    /// Print the EventStream CRD as YAML.
    Crd,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", eventstream_crds::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run { .. } => {
            eprintln!("error: the controller is not built yet (tracked in issue #6)");
            ExitCode::FAILURE
        }
    }
}
