//! `eventstream-dataplane`: the pods an EventStream runs.
//!
//! - `bridge --config FILE`: HTTP ingest into Kafka and Kafka fan-out to WebSocket/SSE clients.
//! - `sink --config FILE`: Kafka into PostgreSQL, exactly once.
//! - `alerts --config FILE`: threshold alerts from the stream into its alerts topic, exactly once.
//! - `check-config --config FILE`: validate a config and print every problem.
//! - `standalone`: everything in one process with an embedded broker, for a laptop.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use eventstream_crds::config::DataplaneConfig;
use eventstream_dataplane::{alerts, bridge, server, sink, telemetry};

#[derive(Parser, Debug)]
#[command(
    name = "eventstream-dataplane",
    version,
    about = "EventStream data plane: bridge, sink and standalone modes"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// HTTP ingest into Kafka and Kafka → WebSocket/SSE fan-out for one stream.
    Bridge {
        /// Dataplane config (YAML), as the operator writes it into the stream's ConfigMap.
        #[arg(long, env = "EVENTSTREAM_CONFIG")]
        config: PathBuf,
    },
    /// Kafka → PostgreSQL, exactly once, for one stream.
    Sink {
        /// Dataplane config (YAML) with a `sink` section.
        #[arg(long, env = "EVENTSTREAM_CONFIG")]
        config: PathBuf,
    },
    /// Threshold alerts: the stream → alert transitions on the alerts topic, exactly once.
    Alerts {
        /// Dataplane config (YAML) with an `alerts` section.
        #[arg(long, env = "EVENTSTREAM_CONFIG")]
        config: PathBuf,
    },
    /// Validate a dataplane config and list every problem in it.
    CheckConfig {
        /// Dataplane config (YAML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Embedded broker, bridge, stream viewer page and (optionally) sink in one process, for
    /// local use: `standalone --demo`, then open the printed URL.
    Standalone(Box<eventstream_dataplane::standalone::Args>),
}

fn load(path: &PathBuf) -> Result<DataplaneConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    DataplaneConfig::from_yaml(&text).with_context(|| format!("config file {}", path.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run_bridge(config: DataplaneConfig) -> Result<()> {
    telemetry::init_logging();
    runtime()?.block_on(async move {
        let shutdown = server::shutdown_on_signal();
        bridge::run(config, prometheus::Registry::new(), shutdown).await
    })
}

fn run_sink(config: DataplaneConfig) -> Result<()> {
    telemetry::init_logging();
    runtime()?.block_on(async move {
        let shutdown = server::shutdown_on_signal();
        sink::run(config, prometheus::Registry::new(), shutdown).await
    })
}

fn run_alerts(config: DataplaneConfig) -> Result<()> {
    telemetry::init_logging();
    runtime()?.block_on(async move {
        let shutdown = server::shutdown_on_signal();
        alerts::run(config, prometheus::Registry::new(), shutdown).await
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::CheckConfig { config } => load(&config).map(|c| {
            println!(
                "{}: valid config for stream {}",
                config.display(),
                c.stream.label()
            );
        }),
        Mode::Bridge { config } => load(&config).and_then(run_bridge),
        Mode::Sink { config } => load(&config).and_then(run_sink),
        Mode::Alerts { config } => load(&config).and_then(run_alerts),
        Mode::Standalone(args) => eventstream_dataplane::standalone::main(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("error: {e:#}");
            eprintln!("{message}");
            // A failure with a condition reason of its own is tagged for the operator, which
            // shows it as that reason instead of `CrashLoopBackOff`.
            let reason = e
                .chain()
                .find_map(|c| c.downcast_ref::<sink::SinkError>())
                .and_then(sink::SinkError::condition_reason);
            let message = match reason {
                Some(reason) => format!("[{reason}] {message}"),
                None => message,
            };
            write_termination_message(Path::new(TERMINATION_LOG), &message);
            ExitCode::FAILURE
        }
    }
}

/// Where Kubernetes reads a container's last words (`terminationMessagePath`'s default).
const TERMINATION_LOG: &str = "/dev/termination-log";

/// In a pod, the fatal error goes to the termination log too: the operator shows it in the
/// stream's status (`SinkReady=False CrashLoopBackOff: …`). Kubernetes keeps at most 4 KiB.
/// Outside a pod the file does not exist and nothing is written.
fn write_termination_message(path: &Path, message: &str) {
    if !path.exists() {
        return;
    }
    let mut end = message.len().min(4000);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(e) = std::fs::write(path, &message[..end]) {
        eprintln!("warning: could not write {}: {e}", path.display());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_fatal_error_reaches_an_existing_termination_log_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("termination-log");
        write_termination_message(&log, "error: no pod here");
        assert!(!log.exists(), "outside a pod nothing is created");
        std::fs::write(&log, "").unwrap();
        let long = format!("error: {}", "é".repeat(3000));
        write_termination_message(&log, &long);
        let written = std::fs::read_to_string(&log).unwrap();
        assert!(
            written.len() <= 4000 && long.starts_with(&written),
            "cut at a char boundary"
        );
        write_termination_message(&log, "error: table t cannot take the sink's rows");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "error: table t cannot take the sink's rows"
        );
    }
}
