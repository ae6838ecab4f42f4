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
//! | [`mod@start`] | [`start`]: all of the above that every `main` begins with, in one call |
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
//!     let op = kit::start(&cli.common, "edgefleet_rollout").await?;
//!     let metrics = kit::ReconcileMetrics::register(&op.registry, "edgefleet_rollout")?;
//!     let recorder = kit::recorder(op.client.clone(), "edgefleet-rollout", &cli.common.identity);
//!     let elector = kit::LeaderElector::from_args(op.client.clone(), &cli.common, "edgefleet-rollout")?
//!         .with_leader_gauge(metrics.leader.clone());
//!
//!     // A standby replica is ready too (see `Readiness`).
//!     op.readiness.set_ready(true);
//!     kit::run_while_leader(elector, op.shutdown.clone(), || {
//!         rollout::controller::run(op.client.clone(), metrics.clone(), recorder.clone())
//!     })
//!     .await;
//!     op.server.wait().await?;
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
pub mod nodes;
pub mod pods;
pub mod shutdown;
pub mod start;
pub mod telemetry;

pub use apply::{apply, apply_params, apply_status, forget_managed_fields};
pub use cli::{CommonArgs, LogFormat};
pub use client::{
    API_CALL_TIMEOUT, BoundRequestsLayer, CountRequestsLayer, client_with_metrics,
    client_with_timeout,
};
pub use conditions::{ConditionStatus, find_condition, is_true, set_condition};
pub use error::{Error, Result};
pub use events::recorder;
pub use http::{HttpServer, Readiness, serve};
pub use leader::{LeaderElector, LeaseTiming, run_while_leader};
pub use metrics::{MetricLabel, ReconcileMetrics, ReconcileTimer, names_of};
pub use shutdown::shutdown_signal;
pub use start::{Started, start};
pub use telemetry::init_tracing;
