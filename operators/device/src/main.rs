//! `edgefleet-device`: the device operator.

use std::time::Duration;

use clap::Parser;
use edgefleet_device::act::OPERATOR;
use edgefleet_device::controller::{self, Config};
use edgefleet_device::metrics::DeviceMetrics;
use edgefleet_device::sync::Staleness;
use edgefleet_kit as kit;

/// Validates Devices against their DeviceModels, tracks twin sync and online state,
/// re-delivers Devices when their model changes and guards models in use.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: kit::CommonArgs,

    /// A property's report is Stale once older than the larger of 3 × its reportCycle and this.
    #[arg(
        long,
        env = "EDGEFLEET_DEVICE_STALE_AFTER_SECONDS",
        default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    stale_after_seconds: u64,

    /// Devices and models reconciled concurrently.
    #[arg(
        long,
        env = "EDGEFLEET_DEVICE_WORKERS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u64).range(1..=64)
    )]
    workers: u64,
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
    } = kit::start(&cli.common, edgefleet_device::METRICS_PREFIX).await?;
    let metrics = kit::ReconcileMetrics::register(&registry, edgefleet_device::METRICS_PREFIX)?;
    let device_metrics = DeviceMetrics::register(&registry)?;
    let recorder = kit::recorder(client.clone(), OPERATOR, &cli.common.identity);
    let elector = kit::LeaderElector::from_args(client.clone(), &cli.common, OPERATOR)?
        .with_leader_gauge(metrics.leader.clone());
    let config = Config {
        scopes: cli.common.watch_scopes(),
        staleness: Staleness {
            floor: Duration::from_secs(cli.stale_after_seconds),
        },
        workers: usize::try_from(cli.workers).unwrap_or(4),
    };

    // A standby replica is ready too: it serves metrics and waits for the lease.
    readiness.set_ready(true);
    kit::run_while_leader(elector, shutdown.clone(), || {
        controller::run(
            client.clone(),
            config.clone(),
            metrics.clone(),
            device_metrics.clone(),
            recorder.clone(),
            shutdown.clone(),
        )
    })
    .await;
    server.wait().await?;
    Ok(())
}
