//! The one error type of the harness.
//!
//! Every variant carries enough context (what was being done, which binary,
//! the tail of a server log) for a failing integration test to explain
//! itself without re-running it by hand.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::kafka::ConsumedRecord;

/// Errors raised while starting, driving or tearing down test fixtures.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary the fixture needs is not installed.
    #[error("`{binary}` not found (looked in: {searched}); {hint}")]
    MissingBinary {
        /// The binary that was looked for, e.g. `initdb`.
        binary: String,
        /// Where it was looked for.
        searched: String,
        /// How to install it.
        hint: String,
    },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An external command ran but exited unsuccessfully.
    #[error("{context}: `{command}` exited with {status}\n{output}")]
    CommandFailed {
        /// What was being done.
        context: String,
        /// The command line, for copy-paste.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr (possibly a log tail).
        output: String,
    },

    /// A server process (PostgreSQL, tansu) did not come up.
    #[error(
        "{server} failed to start after {attempts} attempt(s): {reason}\n--- log tail ({log}) ---\n{log_tail}"
    )]
    StartFailed {
        /// Which server.
        server: &'static str,
        /// How many ports were tried.
        attempts: u32,
        /// The last failure.
        reason: String,
        /// The log file of the last attempt.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// A librdkafka operation failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: KafkaError,
    },

    /// Something did not happen in time.
    #[error("timed out after {waited:?} {context}")]
    Timeout {
        /// What was being waited for.
        context: String,
        /// How long was waited.
        waited: Duration,
    },

    /// `consume_all` saw fewer records than expected before its deadline.
    #[error(
        "consumed {} of {expected} expected record(s) from topic `{topic}` within {waited:?}",
        received.len()
    )]
    Incomplete {
        /// The topic read.
        topic: String,
        /// How many records were expected.
        expected: usize,
        /// How long was waited.
        waited: Duration,
        /// What did arrive, sorted by partition then offset.
        received: Vec<ConsumedRecord>,
    },

    /// The fixture was used in a state that does not allow the call.
    #[error("{0}")]
    InvalidState(String),
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        Self::Kafka {
            context: context.into(),
            source,
        }
    }
}
