//! The operator's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Whether this replica is ready, shared between the operator and `/readyz`.
///
/// Starts not ready. An operator sets it once its CRDs are established. A standby replica
/// (leader election on, not leading) is ready: it is healthy and waiting, and a rolling update
/// must not wait for it to lead, which it cannot do until the old leader goes. A controller that
/// wants `/readyz` to wait for its caches clears the flag when it starts leading and sets it
/// once its stores are ready, and sets it again when it is dropped.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A new flag, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag `/readyz` reports.
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// What `/readyz` currently reports.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    readiness: Readiness,
}

/// A running metrics/health server.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    done: oneshot::Receiver<std::io::Result<()>>,
}

impl HttpServer {
    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has shut down (after the shutdown token trips and open requests
    /// finish).
    ///
    /// # Errors
    /// [`Error::Serve`] if the server failed or its task died.
    pub async fn wait(self) -> Result<()> {
        match self.done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Serve(e.to_string())),
            Err(e) => Err(Error::Serve(e.to_string())),
        }
    }
}

/// Binds `addr` and serves `/metrics` (Prometheus text format from `registry`), `/healthz`
/// (always 200 while the process runs) and `/readyz` (200 when `readiness` says so, else 503)
/// until `shutdown` trips.
///
/// The server runs on its own thread and runtime: a process whose own runtime is saturated (a
/// reconnect storm, a long reconcile burst) still answers its probes and scrapes.
///
/// Binding happens before this returns, so a taken port fails start-up instead of a background
/// task.
///
/// # Errors
/// [`Error::Bind`] when the address cannot be bound or the server thread cannot start.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<HttpServer> {
    let bind_err = |source| Error::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(bind_err)?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            readiness,
        });
    let (tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("http-probes".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await
            });
            let _ = tx.send(result);
        })
        .map_err(bind_err)?;
    tracing::info!(%local_addr, "serving /metrics, /healthz and /readyz");
    Ok(HttpServer { local_addr, done })
}

async fn metrics(State(state): State<AppState>) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain HTTP/1.1 GET; returns the status code and the body. Blocking std I/O on the
    /// blocking pool keeps the test free of an HTTP client (and of tokio's io-util).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let response = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .await
        .unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap();
        (status, body)
    }

    async fn start() -> (HttpServer, Registry, Readiness, CancellationToken) {
        let registry = Registry::new();
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        let server = serve(
            "127.0.0.1:0".parse().unwrap(),
            registry.clone(),
            readiness.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        (server, registry, readiness, shutdown)
    }

    #[tokio::test]
    async fn readyz_follows_the_flag_and_healthz_is_always_ok() {
        let (server, _registry, readiness, shutdown) = start().await;
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await, (503, "not ready".into()));
        readiness.set_ready(true);
        assert_eq!(get(addr, "/readyz").await, (200, "ready".into()));
        readiness.set_ready(false);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/nope").await.0, 404);

        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn metrics_are_served_in_text_format() {
        let (server, registry, _readiness, shutdown) = start().await;
        let m = crate::ReconcileMetrics::register(&registry, "edgefleet_test").unwrap();
        let _ = m.reconcile_started().finish();

        let (status, body) = get(server.local_addr(), "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE edgefleet_test_reconcile_total counter"),
            "{body}"
        );
        assert!(body.contains("edgefleet_test_reconcile_total 1"), "{body}");
        assert!(body.contains("edgefleet_test_reconcile_duration_seconds_bucket{le=\"0.005\"}"));
        shutdown.cancel();
        server.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_bind_error() {
        let (server, _registry, _readiness, shutdown) = start().await;
        let err = serve(
            server.local_addr(),
            Registry::new(),
            Readiness::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.metric_label(), "bind");
        shutdown.cancel();
        server.wait().await.unwrap();
    }
}
