//! Logging and metrics plumbing shared by every mode.
//!
//! Every metric is registered in one [`prometheus::Registry`] per process, served at `/metrics`,
//! named `eventstream_*` and labelled with `stream` (`namespace/name`). Metric families are
//! documented in `docs/metrics.md`.

use prometheus::{Encoder, Registry, TextEncoder};

/// Initialises `tracing` from `RUST_LOG` (default `info`), as text or, with
/// `EVENTSTREAM_LOG_FORMAT=json`, as JSON lines.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("EVENTSTREAM_LOG_FORMAT").is_ok_and(|v| v == "json");
    // A second initialisation (tests) is not an error worth reporting.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The registry in Prometheus' text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding well-formed families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
