//! Test harness shared by every EventStream integration test.
//!
//! It starts real, throw-away dependencies and tears them down on drop, so
//! tests can run in parallel (`cargo test` default) without clashing on ports
//! or directories:
//!
//! * [`postgres::TestPostgres`]: a private PostgreSQL 15 cluster in a temp
//!   dir, on a free port, that can be stopped and started again mid-test.
//! * [`tansu::TansuBroker`]: the tansu Kafka-compatible broker as a child
//!   process with in-memory storage, for tests that need a real broker
//!   process (and can kill it); with a SCRAM user it requires SASL, and
//!   behind a [`tls_front::TlsFront`] it is reached over TLS only.
//! * [`tls_front::TlsFront`]: a TLS listener in front of a plaintext port,
//!   with a throw-away CA.
//! * [`mock::MockKafka`]: librdkafka's in-process mock cluster, for fast
//!   tests and broker fault injection.
//! * [`kafka`]: `produce` / `consume_all` helpers that work against any of
//!   the two brokers above, and [`free_port`].
//!
//! Every fallible call returns [`HarnessError`], whose message names what
//! was being done and, for servers, includes the tail of the server log.

pub mod error;
pub mod kafka;
pub mod mock;
pub mod postgres;
pub mod tansu;
pub mod tls_front;

mod process;

pub use error::HarnessError;
pub use kafka::{ConsumedRecord, consume_all, produce};
pub use mock::MockKafka;
pub use postgres::TestPostgres;
pub use tansu::TansuBroker;
pub use tls_front::TlsFront;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and dropping the listener, so
/// another process may take it before the caller binds it: servers started by
/// this crate retry on a fresh port when that happens.
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| HarnessError::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| HarnessError::io("reading the port of a bound listener", e))?
        .port();
    Ok(port)
}
