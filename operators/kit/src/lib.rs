//! What every edgefleet operator shares, so each operator's `main` is short and they all behave
//! alike: the same flags, logs, metrics, probes, leader election and shutdown.
//!
//! | module | gives |
//! |---|---|
//! | [`cli`] | [`CommonArgs`], flattened into each operator's clap CLI (`env =` on every flag) |
//! | [`telemetry`] | [`init_tracing`]: JSON logs in a pod, text on a terminal, RUST_LOG filter |
//! | [`metrics`] | [`ReconcileMetrics`] under the operator's prefix, [`MetricLabel`] for errors |
//! | [`http`] | [`serve`]: `/metrics`, `/healthz`, `/readyz` (driven by [`Readiness`]) |
//! | [`shutdown`] | [`shutdown_signal`]: one token tripped by SIGTERM / Ctrl-C |
//! | [`leader`] | [`LeaderElector`] on a Lease, [`run_while_leader`] |
//! | [`conditions`] | [`set_condition`], [`find_condition`], [`is_true`] on `metav1.Condition` |
//! | [`mod@apply`] | server-side apply of objects and status, forced, one field manager per operator |
//! | [`events`] | one event [`Recorder`](kube::runtime::events::Recorder) per controller |
//!
//! An operator's `main` with the kit (the controller itself lives in the operator crate):
//!
//! ```ignore
//! use clap::Parser;
//! use edgefleet_kit as kit;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     common: kit::CommonArgs,
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let cli = Cli::parse();
//!     kit::init_tracing(cli.common.log_format, &cli.common.log_filter)?;
//!     let shutdown = kit::shutdown_signal();
//!
//!     let registry = prometheus::Registry::new();
//!     let metrics = kit::ReconcileMetrics::register(&registry, "edgefleet_rollout")?;
//!     let readiness = kit::Readiness::new();
//!     let server =
//!         kit::serve(cli.common.metrics_addr, registry, readiness.clone(), shutdown.clone()).await?;
//!
//!     let client = kube::Client::try_default().await?;
//!     let recorder = kit::recorder(client.clone(), "edgefleet-rollout", &cli.common.identity);
//!     let elector = kit::LeaderElector::from_args(client.clone(), &cli.common, "edgefleet-rollout")?
//!         .with_leader_gauge(metrics.leader.clone());
//!
//!     // Ready once the CRDs are established; a standby replica is ready too (see `Readiness`).
//!     rollout::crds::wait_established(&client).await?;
//!     readiness.set_ready(true);
//!     kit::run_while_leader(elector, shutdown.clone(), || {
//!         rollout::controller::run(client.clone(), metrics.clone(), recorder.clone())
//!     })
//!     .await;
//!     server.wait().await?;
//!     Ok(())
//! }
//! ```

pub mod apply;
pub mod cli;
pub mod client;
pub mod conditions;
pub mod error;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;

pub use apply::{apply, apply_params, apply_status};
pub use cli::{CommonArgs, LogFormat};
pub use client::{CountRequestsLayer, client_with_metrics};
pub use conditions::{ConditionStatus, find_condition, is_true, set_condition};
pub use error::{Error, Result};
pub use events::recorder;
pub use http::{HttpServer, Readiness, serve};
pub use leader::{LeaderElector, LeaseTiming, run_while_leader};
pub use metrics::{MetricLabel, ReconcileMetrics, ReconcileTimer, names_of};
pub use shutdown::shutdown_signal;
pub use telemetry::init_tracing;
