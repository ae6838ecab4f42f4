//! `sim-lease-load`: how many node-Lease renewals a second the test bed's API server takes.
//!
//! The hub renews the Lease of every connected node as a kubelet would (one merge patch of
//! `spec.renewTime` per renewal). Whether one replica can hold N sessions without a node going
//! NotReady is bounded by this figure: N nodes whose Leases must be renewed within the
//! node-lifecycle controller's grace period (40 s) need at least N / 40 writes a second. This
//! measures the API server alone, without the hub: the same patch, from W concurrent writers over
//! L Leases (round robin, so each Lease is written as often as the others), for a fixed time per
//! W. Prints one line per W: writes/s, latency p50/p99, errors.
//!
//! The Leases live in their own namespace (created, and deleted at the end), not in
//! kube-node-lease, so no controller reads them.
//!
//!   sim-lease-load --leases 20000 --writers 16,64,256 --seconds 20

use anyhow::{Context, Result};
use clap::Parser;
use edgefleet_e2e::writeload::{self, Figures};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Measures node-Lease renewals per second the API server takes")]
struct Cli {
    /// Leases written round robin (as many as the nodes one hub would hold).
    #[arg(long, default_value_t = 20_000)]
    leases: usize,
    /// Concurrent writers, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    writers: Vec<usize>,
    /// Measurement time per writer count.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Namespace of the Leases (created if missing, deleted at the end).
    #[arg(long, default_value = "edgefleet-bench-leases")]
    namespace: String,
    /// Keep the namespace (and its Leases) at the end.
    #[arg(long)]
    keep: bool,
}

const FIELD_MANAGER: &str = "sim-lease-load";

fn lease_name(i: usize) -> String {
    format!("lease-{i:06}")
}

fn lease(i: usize) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(i)),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(lease_name(i)),
            lease_duration_seconds: Some(40),
            ..Default::default()
        }),
    }
}

/// `writers` concurrent loops, writer `w` over Leases w, w + W, w + 2W, ...
async fn measure(api: &Api<Lease>, leases: usize, writers: usize, seconds: u64) -> Figures {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    writeload::measure(writers, seconds, |w| {
        let (api, params) = (api.clone(), params.clone());
        move |n: usize| {
            let (api, params) = (api.clone(), params.clone());
            async move {
                let name = lease_name((w + n * writers) % leases);
                let patch = json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
                api.patch(&name, &params, &Patch::Merge(patch))
                    .await
                    .is_ok()
            }
        }
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = Client::try_default().await.context("kubeconfig")?;
    writeload::ensure_namespace(&client, &cli.namespace).await?;
    let api: Api<Lease> = Api::namespaced(client.clone(), &cli.namespace);
    writeload::ensure_objects(&api, cli.leases, |i| Some(lease(i))).await;
    let what = format!(
        "Lease merge patches, {} Leases, {} s each",
        cli.leases, cli.seconds
    );
    println!("{}", writeload::header(&what));
    for &writers in &cli.writers {
        let f = measure(&api, cli.leases, writers.max(1), cli.seconds).await;
        println!("{}", f.row(writers, cli.seconds));
    }
    if !cli.keep {
        writeload::remove_namespace(&client, &cli.namespace).await?;
    }
    Ok(())
}
