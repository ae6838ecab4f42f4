//! `edgefleet-balancer`: keeps edge sessions even across the hub replicas.

use std::time::Duration;

use clap::Parser;
use edgefleet_balancer::act::OPERATOR;
use edgefleet_balancer::controller::{self, Context};
use edgefleet_balancer::metrics::BalancerMetrics;
use edgefleet_kit as kit;

/// Reads the hubs' load reports and orders a hub over its share to release the excess.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: kit::CommonArgs,

    /// Seconds between two looks at each HubBalancer (the observation period, from the spec,
    /// is what spaces releases; this only bounds how late a round notices it has ended).
    #[arg(
        long,
        env = "EDGEFLEET_BALANCER_INTERVAL_SECONDS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    interval_seconds: u64,
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
    } = kit::start(&cli.common, edgefleet_balancer::METRICS_PREFIX).await?;
    let metrics = kit::ReconcileMetrics::register(&registry, edgefleet_balancer::METRICS_PREFIX)?;
    let balancer = BalancerMetrics::register(&registry)?;
    let recorder = kit::recorder(client.clone(), OPERATOR, &cli.common.identity);
    let elector = kit::LeaderElector::from_args(client.clone(), &cli.common, OPERATOR)?
        .with_leader_gauge(metrics.leader.clone());
    let ctx = Context {
        client: client.clone(),
        namespace: cli.common.watch_namespace.clone(),
        interval: Duration::from_secs(cli.interval_seconds),
        metrics: metrics.clone(),
        balancer,
        recorder,
    };

    // A standby replica is ready too: it serves metrics and waits for the lease.
    readiness.set_ready(true);
    kit::run_while_leader(elector, shutdown.clone(), || {
        controller::run(ctx.clone(), shutdown.clone())
    })
    .await;
    server.wait().await?;
    Ok(())
}
