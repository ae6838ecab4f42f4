//! `edgefleet-rollout`: the RolloutJob operator.

use clap::Parser;
use edgefleet_kit as kit;
use edgefleet_rollout::controller::{self, OPERATOR};
use edgefleet_rollout::metrics::RolloutMetrics;

/// Rolls new images across edge workloads in batches, pre-pulling before every swap.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: kit::CommonArgs,
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
    } = kit::start(&cli.common, edgefleet_rollout::METRICS_PREFIX).await?;
    let metrics = kit::ReconcileMetrics::register(&registry, edgefleet_rollout::METRICS_PREFIX)?;
    let rollout = RolloutMetrics::register(&registry)?;
    let recorder = kit::recorder(client.clone(), OPERATOR, &cli.common.identity);
    let elector = kit::LeaderElector::from_args(client.clone(), &cli.common, OPERATOR)?
        .with_leader_gauge(metrics.leader.clone());

    // A standby replica is ready too: it serves metrics and waits for the lease.
    readiness.set_ready(true);
    // One controller per watched namespace (or one cluster-wide): a namespaced install has no
    // cluster-wide read of pods or RolloutJobs. Each keeps its own node cache (stripped nodes,
    // a few hundred bytes each): fine for the handful of namespaces such an install lists.
    let scopes = cli.common.watch_scopes();
    kit::run_while_leader(elector, shutdown.clone(), || {
        let all = futures::future::join_all(scopes.iter().map(|scope| {
            controller::run(
                client.clone(),
                scope.clone(),
                metrics.clone(),
                rollout.clone(),
                recorder.clone(),
                shutdown.clone(),
            )
        }));
        async move {
            all.await;
        }
    })
    .await;
    server.wait().await?;
    Ok(())
}
