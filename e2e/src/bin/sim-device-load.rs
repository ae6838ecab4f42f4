//! `sim-device-load`: how many Device status writes a second the test bed's API server takes,
//! and what the kind of patch costs.
//!
//! The hub writes a device's reported twins as a server-side apply of `status` (force, with
//! the resourceVersion it merged into as a precondition). This measures the API server alone,
//! without the hub: each write changes every property's reported value of one Device, from W
//! concurrent writers over D Devices (writer w owns Devices w, w + W, ...; it keeps each one's
//! resourceVersion from its last answer, as the hub does), for a fixed time per W and per kind
//! of patch:
//!
//! - `apply`: the hub's write (server-side apply of status: the API server computes managed
//!   fields per twin, the twins being a map-list),
//! - `merge`: a JSON merge patch of the same status (the twins list replaced whole).
//!
//! Devices live in their own namespace (created, and deleted at the end).
//!
//!   sim-device-load --devices 2000 --properties 5 --patch apply,merge --writers 16,64 --seconds 20

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use edgefleet_api::devices::Device;
use edgefleet_e2e::writeload;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// Server-side apply of status, as the hub writes.
    Apply,
    /// JSON merge patch of status.
    Merge,
}

#[derive(Parser)]
#[command(about = "Measures Device status writes per second the API server takes")]
struct Cli {
    /// Devices written.
    #[arg(long, default_value_t = 2_000)]
    devices: usize,
    /// Properties per Device, each with a reported twin changed by every write.
    #[arg(long, default_value_t = 5)]
    properties: usize,
    /// Kinds of patch, one measurement per kind and writer count.
    #[arg(long, value_delimiter = ',', default_value = "apply,merge")]
    patch: Vec<Kind>,
    /// Concurrent writers, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    writers: Vec<usize>,
    /// Measurement time per kind and writer count.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Namespace of the Devices (created if missing, deleted at the end).
    #[arg(long, default_value = "edgefleet-bench-device-writes")]
    namespace: String,
    /// Keep the namespace (and its Devices) at the end.
    #[arg(long)]
    keep: bool,
}

/// As the hub's: the API server keeps one owner per field.
const FIELD_MANAGER: &str = "sim-device-load";

fn device_name(i: usize) -> String {
    format!("device-{i:06}")
}

fn device(i: usize, properties: usize) -> Option<Device> {
    let device = serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": device_name(i)},
        "spec": {"deviceModelRef": {"name": "sensor"}, "nodeName": "edge-0000",
            "properties": (0..properties)
                .map(|p| json!({"name": format!("p{p}"), "reportToCloud": true}))
                .collect::<Vec<_>>()},
    }));
    device.map_err(|e| eprintln!("a Device: {e}")).ok()
}

/// The status a write sends: every property's reported value is `value`.
fn status(properties: usize, value: usize) -> Value {
    let now = jiff::Timestamp::now();
    let twins: Vec<Value> = (0..properties)
        .map(|p| {
            json!({"propertyName": format!("p{p}"), "reported": {"value": value.to_string(),
                "metadata": {"timestamp": now.as_millisecond().to_string(), "type": "int"}}})
        })
        .collect();
    json!({"twins": twins, "state": "online", "lastOnlineTime": now.to_string()})
}

async fn resource_versions(api: &Api<Device>) -> Result<HashMap<String, String>> {
    let list = api
        .list(&ListParams::default())
        .await
        .context("listing Devices")?;
    Ok(list
        .items
        .iter()
        .map(|d| (d.name_any(), d.resource_version().unwrap_or_default()))
        .collect())
}

async fn measure(cli: &Cli, api: &Api<Device>, kind: Kind, writers: usize) -> Result<String> {
    let versions = resource_versions(api).await?;
    let (devices, properties) = (cli.devices, cli.properties);
    let figures = writeload::measure(writers, cli.seconds, |w| {
        // This writer's Devices and their resourceVersions.
        let mine: Vec<(String, String)> = (w..devices)
            .step_by(writers)
            .map(|i| {
                let name = device_name(i);
                let rv = versions.get(&name).cloned().unwrap_or_default();
                (name, rv)
            })
            .collect();
        let api = api.clone();
        let versions = Arc::new(Mutex::new(mine));
        move |n: usize| {
            let (api, versions) = (api.clone(), versions.clone());
            async move {
                let (name, rv) = {
                    let v = versions.lock().unwrap_or_else(|p| p.into_inner());
                    if v.is_empty() {
                        return false;
                    }
                    v[n % v.len()].clone()
                };
                let written = match kind {
                    Kind::Apply => {
                        let body = json!({
                            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
                            "metadata": {"name": name, "resourceVersion": rv},
                            "status": status(properties, n),
                        });
                        let params = PatchParams::apply(FIELD_MANAGER).force();
                        api.patch_status(&name, &params, &Patch::Apply(&body)).await
                    }
                    Kind::Merge => {
                        let body = json!({
                            "metadata": {"resourceVersion": rv},
                            "status": status(properties, n),
                        });
                        let params = PatchParams {
                            field_manager: Some(FIELD_MANAGER.into()),
                            ..Default::default()
                        };
                        api.patch_status(&name, &params, &Patch::Merge(&body)).await
                    }
                };
                let rv = match &written {
                    Ok(d) => d.resource_version(),
                    // Someone else wrote it (should not happen: writers own their Devices).
                    Err(_) => api.get(&name).await.ok().and_then(|d| d.resource_version()),
                };
                if let Some(rv) = rv {
                    let mut v = versions.lock().unwrap_or_else(|p| p.into_inner());
                    let i = n % v.len();
                    v[i].1 = rv;
                }
                written.is_ok()
            }
        }
    })
    .await;
    Ok(format!("{} {kind:?}", figures.row(writers, cli.seconds)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = Client::try_default().await.context("kubeconfig")?;
    writeload::ensure_namespace(&client, &cli.namespace).await?;
    let api: Api<Device> = Api::namespaced(client.clone(), &cli.namespace);
    writeload::ensure_objects(&api, cli.devices, |i| device(i, cli.properties)).await;
    let what = format!(
        "Device status writes, {} Devices x {} properties, {} s each; last column: patch",
        cli.devices, cli.properties, cli.seconds
    );
    println!("{}", writeload::header(&what));
    for &kind in &cli.patch {
        for &writers in &cli.writers {
            println!("{}", measure(&cli, &api, kind, writers.max(1)).await?);
        }
    }
    if !cli.keep {
        writeload::remove_namespace(&client, &cli.namespace).await?;
    }
    Ok(())
}
