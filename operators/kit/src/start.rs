//! The first steps of every operator's `main`, done one way: logs, the shutdown token, the
//! metrics registry and its `/metrics` `/healthz` `/readyz` server, and a client that counts its
//! own API requests.

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::{CommonArgs, HttpServer, Readiness, Result};

/// What [`start`] set up; the operator registers its own metrics in `registry`.
pub struct Started {
    pub shutdown: CancellationToken,
    pub registry: Registry,
    pub readiness: Readiness,
    pub server: HttpServer,
    /// Counts requests as `<prefix>_api_requests_total{verb}`.
    pub client: kube::Client,
}

/// Logs as `common` says, traps SIGTERM / Ctrl-C, serves metrics and probes on
/// `common.metrics_addr` (not ready until the operator says so) and builds the client.
///
/// # Errors
/// Logging already initialised, the metrics address taken, or no kubeconfig / in-cluster config.
pub async fn start(common: &CommonArgs, metrics_prefix: &str) -> Result<Started> {
    crate::init_tracing(common.log_format, &common.log_filter)?;
    let shutdown = crate::shutdown_signal();
    let registry = Registry::new();
    let readiness = Readiness::new();
    let server = crate::serve(
        common.metrics_addr,
        registry.clone(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await?;
    let client = crate::client_with_metrics(&registry, metrics_prefix).await?;
    Ok(Started {
        shutdown,
        registry,
        readiness,
        server,
        client,
    })
}
