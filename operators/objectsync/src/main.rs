//! `edgefleet-objectsync`: the ObjectSync operator.

use std::time::Duration;

use clap::Parser;
use edgefleet_kit as kit;
use edgefleet_objectsync::act::OPERATOR;
use edgefleet_objectsync::controller::{self, Config};
use edgefleet_objectsync::metrics::SyncMetrics;
use edgefleet_objectsync::plan::Window;

/// Keeps one ObjectSync per (edge node, object it needs), asks for resyncs of stale
/// deliveries, and garbage-collects syncs of deleted objects and nodes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: kit::CommonArgs,

    /// How long a sync may trail the live object (since the hub's last send, the sync's
    /// creation or the object's change) before the hub is asked to re-queue it.
    #[arg(
        long,
        env = "EDGEFLEET_OBJECTSYNC_RESEND_WINDOW_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    resend_window_seconds: u64,

    /// The longest wait between two resync requests for a sync the hub does not act on (an
    /// offline node): the wait doubles from the resend window up to this.
    #[arg(
        long,
        env = "EDGEFLEET_OBJECTSYNC_MAX_BACKOFF_SECONDS",
        default_value_t = 600
    )]
    max_backoff_seconds: u64,

    /// Nodes reconciled concurrently.
    #[arg(
        long,
        env = "EDGEFLEET_OBJECTSYNC_WORKERS",
        default_value_t = 8,
        value_parser = clap::value_parser!(u64).range(1..=256)
    )]
    workers: u64,

    /// API writes in flight per node.
    #[arg(
        long,
        env = "EDGEFLEET_OBJECTSYNC_WRITES_PER_NODE",
        default_value_t = 8,
        value_parser = clap::value_parser!(u64).range(1..=64)
    )]
    writes_per_node: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let kit::Started {
        shutdown,
        registry,
        readiness,
        server,
        client,
        ..
    } = kit::start(&cli.common, edgefleet_objectsync::METRICS_PREFIX).await?;
    let metrics = kit::ReconcileMetrics::register(&registry, edgefleet_objectsync::METRICS_PREFIX)?;
    let sync_metrics = SyncMetrics::register(&registry)?;
    let recorder = kit::recorder(client.clone(), OPERATOR, &cli.common.identity);
    let elector = kit::LeaderElector::from_args(client.clone(), &cli.common, OPERATOR)?
        .with_leader_gauge(metrics.leader.clone());
    let config = Config {
        scopes: cli.common.watch_scopes(),
        window: Window {
            resend: Duration::from_secs(cli.resend_window_seconds),
            max_backoff: Duration::from_secs(cli.max_backoff_seconds),
        },
        workers: usize::try_from(cli.workers).unwrap_or(8),
        writes_per_node: usize::try_from(cli.writes_per_node).unwrap_or(8),
    };

    // A standby replica is ready too: it serves metrics and waits for the lease.
    readiness.set_ready(true);
    kit::run_while_leader(elector, shutdown.clone(), || {
        controller::run(
            client.clone(),
            config.clone(),
            metrics.clone(),
            sync_metrics.clone(),
            recorder.clone(),
            shutdown.clone(),
        )
    })
    .await;
    server.wait().await?;
    Ok(())
}
