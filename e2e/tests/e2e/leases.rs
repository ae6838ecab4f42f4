//! The hub's node heartbeats (Lease renewals, node status) in the API server's Priority and
//! Fairness: the chart's FlowSchema puts them in `node-high`, as kubelets' own are, and nothing
//! else the hub does. Read from the API server's answer itself: every response names the
//! priority level that admitted the request (`X-Kubernetes-PF-PriorityLevel-UID`).

use anyhow::{Context, Result};
use edgefleet_e2e::client;
use edgefleet_e2e::operator::{RELEASE, install_chart, serviceaccount_kubeconfig};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::flowcontrol::v1::PriorityLevelConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::client::Body;
use kube::{Client, ResourceExt};

const PRIORITY_LEVEL_HEADER: &str = "X-Kubernetes-PF-PriorityLevel-UID";

async fn client_of(kubeconfig: &std::path::Path) -> Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// Sends `request` as the client's user; the UID of the priority level that admitted it.
async fn admitted_by(client: &Client, request: http::Request<Vec<u8>>) -> Result<String> {
    let (parts, body) = request.into_parts();
    let response = client
        .send(http::Request::from_parts(parts, Body::from(body)))
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "the API server answered {}",
        response.status()
    );
    Ok(response
        .headers()
        .get(PRIORITY_LEVEL_HEADER)
        .context("no priority level header: is API Priority and Fairness off?")?
        .to_str()?
        .to_string())
}

async fn level_uid(admin: &Client, name: &str) -> Result<String> {
    let level = Api::<PriorityLevelConfiguration>::all(admin.clone())
        .get(name)
        .await?;
    level.uid().context("priority level without uid")
}

#[tokio::test]
async fn leases_the_hubs_lease_renewals_are_admitted_as_a_kubelets_and_nothing_else_it_does() {
    install_chart().await.unwrap();
    let admin = client().await.unwrap();
    let hub_sa = format!("{RELEASE}-hub");
    let hub = client_of(&serviceaccount_kubeconfig(&hub_sa, "leases-hub.kubeconfig").unwrap())
        .await
        .unwrap();
    let node_high = level_uid(&admin, "node-high").await.unwrap();
    let workload_low = level_uid(&admin, "workload-low").await.unwrap();

    // A Lease as the hub creates one for a node it serves, then renews it.
    let name = format!("e2e-pf-{}", std::process::id());
    let leases: Api<Lease> = Api::namespaced(hub.clone(), "kube-node-lease");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(40),
            ..Default::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let renewal = http::Request::patch(format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}?fieldManager=edgefleet-hub"
    ))
    .header("Content-Type", "application/merge-patch+json")
    .body(
        serde_json::to_vec(&serde_json::json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}}))
            .unwrap(),
    )
    .unwrap();
    let renewal_level = admitted_by(&hub, renewal).await;
    Api::<Lease>::namespaced(admin.clone(), "kube-node-lease")
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        renewal_level.unwrap(),
        node_high,
        "the hub's Lease renewal was not admitted in node-high (FlowSchema {RELEASE}-hub-node-heartbeats)"
    );

    // Other work of the hub (its load report ConfigMaps) stays with every other ServiceAccount.
    let other = http::Request::get(format!(
        "/api/v1/namespaces/{}/configmaps?limit=1",
        edgefleet_e2e::operator::SYSTEM_NAMESPACE
    ))
    .body(Vec::new())
    .unwrap();
    assert_eq!(
        admitted_by(&hub, other).await.unwrap(),
        workload_low,
        "the FlowSchema matches more than the hub's node heartbeats"
    );
}
