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

type Checks = Arc<Mutex<Vec<(String, Arc<AtomicBool>)>>>;

/// Named readiness checks: the process is ready when every registered check is.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Checks,
}

impl Readiness {
    /// Registers a check, initially not ready, and returns its flag.
    pub fn register(&self, name: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.checks.lock().push((name.to_string(), flag.clone()));
        flag
    }

    /// Names of the checks that are not ready.
    pub fn pending(&self) -> Vec<String> {
        self.checks
            .lock()
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Acquire))
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
