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
    /// The same, on an HTTP/2 connection of its own (opened on first use): for writes that must
    /// not queue behind the operator's other requests, as kubelet's heartbeat client (node
    /// Leases: a burst of other work fills `client`'s streams, and a renewal waiting there lets
    /// the node go NotReady).
    pub heartbeat: kube::Client,
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
    let layer = crate::client::CountRequestsLayer::register(&registry, metrics_prefix)?;
    let config = kube::Config::infer().await?;
    let client =
        crate::client::client_with_layer(config.clone(), &layer).map_err(crate::Error::Client)?;
    let heartbeat =
        crate::client::client_with_layer(config, &layer).map_err(crate::Error::Client)?;
    Ok(Started {
        shutdown,
        registry,
        readiness,
        server,
        client,
        heartbeat,
    })
}
