//! The HTTP server skeleton every mode shares: `/healthz` (liveness), `/readyz` (readiness from
//! named checks the modes register), `/metrics`, and graceful shutdown on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// One readiness check: a flag its owner sets, or a condition evaluated at each probe (so that a
/// condition that depends on time, such as "heard from Kafka lately", needs no ticker).
#[derive(Clone)]
enum Check {
    Flag(Arc<AtomicBool>),
    Condition(Arc<dyn Fn() -> bool + Send + Sync>),
}

impl Check {
    fn ok(&self) -> bool {
        match self {
            Check::Flag(flag) => flag.load(Ordering::Acquire),
            Check::Condition(ready) => ready(),
        }
    }
}

type Checks = Arc<Mutex<Vec<(String, Check)>>>;

/// Named readiness checks: the process is ready when every registered check is.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Checks,
    draining: Arc<std::sync::OnceLock<CancellationToken>>,
}

impl Readiness {
    /// Registers a check, initially not ready, and returns its flag.
    pub fn register(&self, name: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.checks
            .lock()
            .push((name.to_string(), Check::Flag(flag.clone())));
        flag
    }

    /// Registers a check that is ready whenever `ready` returns true (evaluated at each probe;
    /// it must be cheap and must not block).
    pub fn register_condition(&self, name: &str, ready: impl Fn() -> bool + Send + Sync + 'static) {
        self.checks
            .lock()
            .push((name.to_string(), Check::Condition(Arc::new(ready))));
    }

    /// Registers `draining`: not ready from the moment `shutdown` is cancelled, so that a load
    /// balancer stops sending new clients while the process closes the ones it has.
    pub fn drain_on(&self, shutdown: &CancellationToken) {
        let _ = self.draining.set(shutdown.clone());
        let shutdown = shutdown.clone();
        self.register_condition("draining", move || !shutdown.is_cancelled());
    }

    /// Whether the drain registered with [`drain_on`](Self::drain_on) has started.
    pub fn is_draining(&self) -> bool {
        self.draining.get().is_some_and(|t| t.is_cancelled())
    }

    /// Names of the checks that are not ready.
    pub fn pending(&self) -> Vec<String> {
        let checks = self.checks.lock().clone();
        checks
            .iter()
            .filter(|(_, check)| !check.ok())
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[derive(Clone)]
struct Ops {
    registries: Vec<Registry>,
    readiness: Readiness,
}

/// `/healthz`, `/readyz` and `/metrics`, to merge with a mode's own routes.
pub fn ops_routes(registry: Registry, readiness: Readiness) -> Router {
    ops_routes_for(vec![registry], readiness)
}

/// [`ops_routes`] for a process with several registries (standalone: one per stream), whose
/// families `/metrics` merges.
pub fn ops_routes_for(registries: Vec<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ops {
            registries,
            readiness,
        })
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let pending = ops.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", pending.join(", ")),
        )
    }
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render_all(&ops.registries),
    )
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}

/// Binds `listen`, with an error that says what to do when the port is taken.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {listen}: the address is in use; stop the other process or choose another address"
            )
        } else {
            anyhow::anyhow!("cannot listen on {listen}: {e}")
        }
    })
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_every_failing_check_flags_conditions_and_the_drain() {
        let readiness = Readiness::default();
        let started = readiness.register("started");
        let reachable = Arc::new(AtomicBool::new(true));
        let r = reachable.clone();
        readiness.register_condition("kafka-reachable", move || r.load(Ordering::Acquire));
        let shutdown = CancellationToken::new();
        readiness.drain_on(&shutdown);
        assert_eq!(readiness.pending(), ["started"]);
        started.store(true, Ordering::Release);
        assert!(readiness.pending().is_empty());
        // Ready is not for ever: conditions are read at each probe.
        reachable.store(false, Ordering::Release);
        assert_eq!(readiness.pending(), ["kafka-reachable"]);
        reachable.store(true, Ordering::Release);
        assert!(!readiness.is_draining());
        shutdown.cancel();
        assert_eq!(readiness.pending(), ["draining"]);
        assert!(readiness.is_draining());
    }
}
