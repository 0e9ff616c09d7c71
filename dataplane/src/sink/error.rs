//! Why the sink cannot do something, with the cause named, and whether retrying can help.

use rdkafka::error::KafkaError;

/// A sink failure. [`SinkError::is_retryable`] tells the caller whether waiting can fix it
/// (unreachable database or broker) or a human must act (credentials, table shape).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// `EVENTSTREAM_POSTGRES_URL` cannot be parsed.
    #[error("the PostgreSQL URL in {var} is invalid: {source}{}", cause(.source))]
    InvalidUrl {
        /// The variable holding the URL.
        var: &'static str,
        /// The parser's complaint.
        source: tokio_postgres::Error,
    },
    /// The database server cannot be reached (refused, timed out, DNS).
    #[error("cannot reach PostgreSQL at {target}: {source}{}", cause(.source))]
    Unreachable {
        /// `user@host:port/database`, without the password.
        target: String,
        /// The connection error.
        source: tokio_postgres::Error,
    },
    /// The server refused the credentials or the role.
    #[error(
        "PostgreSQL at {target} refused the login: {message} (check the user and password in the URL secret)"
    )]
    Authentication {
        /// `user@host:port/database`, without the password.
        target: String,
        /// The server's message.
        message: String,
    },
    /// The database named in the URL does not exist.
    #[error("PostgreSQL at {target}: {message} (create the database or fix the URL)")]
    DatabaseMissing {
        /// `user@host:port/database`, without the password.
        target: String,
        /// The server's message.
        message: String,
    },
    /// The URL's TLS parameters cannot be used: an unknown `sslmode`, a certificate file that is
    /// missing or holds no certificate, `sslcert` without `sslkey`.
    #[error("the PostgreSQL URL in {var}: {message}")]
    TlsConfig {
        /// The variable holding the URL.
        var: &'static str,
        /// What is wrong.
        message: String,
    },
    /// TLS is required (`sslmode=require` or `verify-*`) but the server does not offer it.
    #[error(
        "PostgreSQL at {target} does not offer TLS, and sslmode={mode} requires it (enable ssl on the server, or set sslmode=prefer or disable)"
    )]
    TlsUnavailable {
        /// `user@host:port/database`, without the password.
        target: String,
        /// The URL's `sslmode`.
        mode: &'static str,
    },
    /// The server accepts only TLS connections (`hostssl` in `pg_hba.conf`) and the URL said
    /// `sslmode=disable`.
    #[error(
        "PostgreSQL at {target} refused a connection without TLS: {message} (the server requires TLS: set sslmode=require or verify-full instead of sslmode={mode})"
    )]
    TlsRequired {
        /// `user@host:port/database`, without the password.
        target: String,
        /// The URL's `sslmode`.
        mode: &'static str,
        /// The server's message.
        message: String,
    },
    /// The TLS handshake failed for a reason a retry cannot fix: the server's certificate is not
    /// trusted or does not name the host, or client and server share no protocol.
    #[error("TLS handshake with PostgreSQL at {target} failed (sslmode={mode}): {reason}")]
    TlsHandshake {
        /// `user@host:port/database`, without the password.
        target: String,
        /// The URL's `sslmode`.
        mode: &'static str,
        /// Why, and what to check.
        reason: String,
    },
    /// The server accepted the TCP connection but did not finish the TLS handshake and login in
    /// time.
    #[error(
        "PostgreSQL at {target} did not complete the connection (TLS handshake and login) within {seconds}s"
    )]
    ConnectTimeout {
        /// `user@host:port/database`, without the password.
        target: String,
        /// The limit.
        seconds: u64,
    },
    /// The events table exists but cannot take the sink's rows.
    #[error("table {table} exists with an incompatible shape: {}", problems.join("; "))]
    IncompatibleTable {
        /// The table.
        table: String,
        /// Every mismatch found.
        problems: Vec<String>,
    },
    /// `timescale: Enabled` but the extension is neither installed nor available.
    #[error(
        "sink.timescale is `Enabled` but the TimescaleDB extension is not available in this database (install TimescaleDB, or set timescale: Auto or Disabled)"
    )]
    TimescaleMissing,
    /// The events table belongs to another stream (or holds rows this stream did not write): its
    /// key `("partition", "offset")` has no topic, so rows of two streams would collide and one
    /// of them would be dropped as "already stored".
    #[error("table {table} {why}; a table holds the rows of one stream only. {fix}")]
    TableOwnedByAnotherStream {
        /// The table.
        table: String,
        /// Who owns it, or what is in it.
        why: String,
        /// What the user can do.
        fix: String,
    },
    /// A schema statement failed.
    #[error("cannot prepare table {table}: {action}: {source}")]
    Schema {
        /// The table.
        table: String,
        /// What was being done.
        action: &'static str,
        /// The database error.
        source: tokio_postgres::Error,
    },
    /// A statement failed for a reason other than the row data (connection lost, server
    /// shutting down, lock timeout).
    #[error("PostgreSQL error while {action}: {source}{}", cause(.source))]
    Database {
        /// What was being done.
        action: &'static str,
        /// The database error.
        source: tokio_postgres::Error,
    },
    /// The database did not answer in time.
    #[error("PostgreSQL did not answer within {seconds}s while {action}")]
    Timeout {
        /// What was being done.
        action: &'static str,
        /// The limit.
        seconds: u64,
    },
    /// The stored position is behind the start of the consumer's stream: writing would leave a
    /// hole, so the batch is refused and the consumer repositions.
    #[error(
        "partition {partition}: PostgreSQL holds records up to offset {stored}, but this batch starts at {from}; repositioning"
    )]
    PositionMismatch {
        /// The partition.
        partition: i32,
        /// `next_offset` in `eventstream_offsets`.
        stored: i64,
        /// Where the batch's contiguous stream starts.
        from: i64,
    },
    /// Producing to the dead-letter topic failed.
    #[error("cannot send {count} record(s) to the dead-letter topic {topic}: {source}")]
    DeadLetter {
        /// The dead-letter topic.
        topic: String,
        /// Records in the failed send.
        count: usize,
        /// The producer error.
        source: KafkaError,
    },
    /// A Kafka client operation failed.
    #[error("Kafka error while {action}: {source}")]
    Kafka {
        /// What was being done.
        action: String,
        /// The client error.
        source: KafkaError,
    },
    /// The writer task is gone (the process is shutting down).
    #[error("the database writer has stopped")]
    WriterGone,
}

/// `: cause` of a tokio-postgres error, whose own message leaves it out (`invalid connection
/// string` without `unknown option `sslcrl``, `error connecting to server` without `Connection
/// refused`, `db error` without the server's message).
fn cause(error: &tokio_postgres::Error) -> String {
    std::error::Error::source(error)
        .map(|c| format!(": {c}"))
        .unwrap_or_default()
}

impl SinkError {
    /// Whether waiting and trying again can succeed without a human changing something.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Database { .. }
            | Self::Timeout { .. }
            | Self::ConnectTimeout { .. }
            | Self::PositionMismatch { .. }
            | Self::DeadLetter { .. }
            | Self::Kafka { .. }
            | Self::Schema { .. } => true,
            Self::InvalidUrl { .. }
            | Self::Authentication { .. }
            | Self::DatabaseMissing { .. }
            | Self::TlsConfig { .. }
            | Self::TlsUnavailable { .. }
            | Self::TlsRequired { .. }
            | Self::TlsHandshake { .. }
            | Self::IncompatibleTable { .. }
            | Self::TableOwnedByAnotherStream { .. }
            | Self::TimescaleMissing
            | Self::WriterGone => false,
        }
    }

    /// The `SinkReady` condition reason the operator shows for this error when it stops the sink,
    /// if it has one of its own (see `operator/src/conditions.rs`, `DATAPLANE_REASONS`).
    pub fn condition_reason(&self) -> Option<&'static str> {
        match self {
            Self::TableOwnedByAnotherStream { .. } => Some("TableOwnedByAnotherStream"),
            _ => None,
        }
    }

    /// The error's category: the `kind` label of `eventstream_sink_database_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "invalid_url",
            Self::Unreachable { .. } => "unreachable",
            Self::Authentication { .. } => "authentication",
            Self::DatabaseMissing { .. } => "database_missing",
            Self::TlsConfig { .. } => "tls_config",
            Self::TlsUnavailable { .. } | Self::TlsRequired { .. } | Self::TlsHandshake { .. } => {
                "tls"
            }
            Self::ConnectTimeout { .. } => "timeout",
            Self::IncompatibleTable { .. } => "incompatible_table",
            Self::TableOwnedByAnotherStream { .. } => "table_owned_by_another_stream",
            Self::TimescaleMissing => "timescale_missing",
            Self::Schema { .. } => "schema",
            Self::Database { .. } => "database",
            Self::Timeout { .. } => "timeout",
            Self::PositionMismatch { .. } => "position_mismatch",
            Self::DeadLetter { .. } => "dead_letter",
            Self::Kafka { .. } => "kafka",
            Self::WriterGone => "stopped",
        }
    }
}
