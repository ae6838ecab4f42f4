//! The test bed itself behaves like a real cluster with edge nodes: kwok nodes are Ready and
//! labelled, the scheduler places pods on them, kwok plays the kubelet (including simulated
//! image pulls and pull failures, which the rollout tests rely on).

use edgefleet_e2e::{TestNamespace, client, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use std::time::{Duration, Instant};

const EDGE_LABEL: &str = "node-role.kubernetes.io/edge";

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn edge_nodes_are_ready_and_labelled() {
    let client = client().await.unwrap();
    // The test bed's own (kwok) nodes. Nodes another test has taken offline on purpose carry
    // DISTURBED_LABEL; nodes registered by edge agents through a hub are not the test bed's.
    let selector = format!("{EDGE_LABEL},type=kwok,!{}", edgefleet_e2e::DISTURBED_LABEL);
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert!(
        nodes.items.len() >= 10,
        "only {} edge nodes",
        nodes.items.len()
    );
    for node in &nodes.items {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let name = node.metadata.name.clone().unwrap_or_default();
        assert!(ready(node), "{name} is not Ready");
        for key in [
            "topology.edgefleet.io/region",
            "topology.edgefleet.io/station",
        ] {
            assert!(labels.contains_key(key), "{name} lacks label {key}");
        }
    }
}

fn pod(name: &str, image: &str, pull_seconds: Option<&str>) -> Pod {
    let annotations = pull_seconds
        .map(|s| serde_json::json!({"edgefleet.io/sim-pull-seconds": s}))
        .unwrap_or(serde_json::json!({}));
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeSelector": {EDGE_LABEL: "", "type": "kwok"},
            "containers": [{"name": "app", "image": image}],
        }
    }))
    .unwrap()
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[tokio::test]
async fn a_scheduled_pod_pulls_then_runs() {
    let client = client().await.unwrap();
    let ns = TestNamespace::new(&client, "testbed").await.unwrap();
    let pods: Api<Pod> = ns.api();
    let start = Instant::now();
    pods.create(
        &PostParams::default(),
        &pod("app", "registry.example/app:1", Some("3")),
    )
    .await
    .unwrap();

    // While the image "pulls" the kubelet reports ContainerCreating ...
    let creating = wait_for(
        "the pod to be bound and creating",
        Duration::from_secs(30),
        || async {
            let p = pods.get("app").await?;
            Ok((waiting_reason(&p).as_deref() == Some("ContainerCreating")).then_some(p))
        },
    )
    .await
    .unwrap();
    assert!(
        creating.spec.as_ref().unwrap().node_name.is_some(),
        "scheduled onto a node"
    );

    // ... then the container runs with the image recorded, as after a real pull.
    let running = wait_for(
        "the pod to be Running and Ready",
        Duration::from_secs(30),
        || async {
            let p = pods.get("app").await?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Ok(ready.then_some(p))
        },
    )
    .await
    .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "the 3 s pull was simulated"
    );
    let status = running.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let container = &status.container_statuses.unwrap()[0];
    assert!(!container.image_id.is_empty(), "imageID set after the pull");
    assert!(container.state.as_ref().unwrap().running.is_some());
}

#[tokio::test]
async fn a_pull_failure_shows_as_the_kubelet_reports_it() {
    let client = client().await.unwrap();
    let ns = TestNamespace::new(&client, "pullfail").await.unwrap();
    let pods: Api<Pod> = ns.api();
    pods.create(
        &PostParams::default(),
        &pod("bad", "registry.example/app:2-pull-fail", Some("1")),
    )
    .await
    .unwrap();
    let seen = wait_for("ImagePullBackOff", Duration::from_secs(30), || async {
        let p = pods.get("bad").await?;
        Ok((waiting_reason(&p).as_deref() == Some("ImagePullBackOff")).then_some(p))
    })
    .await
    .unwrap();
    let status = seen.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let c = &status.container_statuses.unwrap()[0];
    assert!(c.image_id.is_empty() && !c.ready);
    let message = c
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap_or_default();
    assert!(message.contains("Back-off pulling image"), "{message}");
}

#[tokio::test]
async fn controller_manager_and_scheduler_do_their_jobs() {
    let client = client().await.unwrap();
    let ns = TestNamespace::new(&client, "kcm").await.unwrap();
    // Service-account tokens: the controller-manager creates the default ServiceAccount.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = ns.api();
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || async { Ok(sas.get_opt("default").await?) },
    )
    .await
    .unwrap();
    // A Deployment becomes pods on edge nodes: controller-manager, scheduler and kwok at work.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = ns.api();
    let d = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"edgefleet.io/sim-pull-seconds": "0"}},
                "spec": {"nodeSelector": {EDGE_LABEL: "", "type": "kwok"}, "containers": [{"name": "web", "image": "registry.example/web:1"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    wait_for("3 ready replicas", Duration::from_secs(60), || async {
        let d = deployments.get("web").await?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        Ok((ready == 3).then_some(()))
    })
    .await
    .unwrap();
}
