//! The rollout operator against the real control plane, run as the chart's ServiceAccount.
//! kwok simulates the pulls: every pod pays its pull time, and an image containing
//! `pull-fail-on-<node>.<node>` cannot be pulled on those nodes.

use edgefleet_api::rollout::{RolloutJob, RolloutPhase, keys};
use edgefleet_e2e::operator::Operator;
use edgefleet_e2e::podlog::{PodLog, Seen};
use edgefleet_e2e::{TestNamespace, apply_object, client, install_crds, wait_for};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub(crate) const OLD: &str = "registry.example/toll/agent:1.0";
pub(crate) const NEW: &str = "registry.example/toll/agent:2.0";
pub(crate) const STATION: &str = "topology.edgefleet.io/station";
const REGION: &str = "topology.edgefleet.io/region";

pub(crate) struct Bed {
    pub(crate) client: Client,
    pub(crate) ns: TestNamespace,
    pub(crate) operator: Operator,
    pub(crate) pods: PodLog,
}

pub(crate) async fn bed(prefix: &str) -> Bed {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, prefix).await.unwrap();
    let pods = PodLog::start(&client, &ns.name);
    let operator = Operator::start("rollout", &ns.name).await.unwrap();
    Bed {
        client,
        ns,
        operator,
        pods,
    }
}

/// A DaemonSet `name` on the nodes with `node_label`, running `OLD`, all pods Ready.
pub(crate) async fn daemonset(bed: &Bed, name: &str, node_label: (&str, &str)) -> usize {
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"edgefleet.io/sim-pull-seconds": "1"}},
                "spec": {
                    "nodeSelector": {node_label.0: node_label.1},
                    "containers": [{"name": "agent", "image": OLD}]
                }
            }
        }
    }))
    .unwrap();
    let api: Api<DaemonSet> = bed.ns.api();
    api.create(&PostParams::default(), &ds).await.unwrap();
    let nodes = Api::<Node>::all(bed.client.clone())
        .list(&ListParams::default().labels(&format!("{}={}", node_label.0, node_label.1)))
        .await
        .unwrap()
        .items
        .len();
    wait_for(
        &format!("DaemonSet {name} Ready on {nodes} nodes"),
        Duration::from_secs(90),
        || async {
            let s = api.get(name).await?.status.unwrap_or_default();
            Ok(
                (s.number_ready as usize == nodes && s.desired_number_scheduled as usize == nodes)
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();
    nodes
}

pub(crate) async fn create_job(
    bed: &Bed,
    name: &str,
    app: &str,
    image: &str,
    extra: serde_json::Value,
) {
    let mut spec = serde_json::json!({
        "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": app}}},
        "image": image,
        "verify": {"readyTimeoutSeconds": 60, "minReadySeconds": 1},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let job = serde_json::json!({
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "RolloutJob",
        "metadata": {"name": name},
        "spec": spec,
    });
    apply_object(&bed.client, &job, Some(&bed.ns.name))
        .await
        .unwrap();
}

pub(crate) async fn patch_job(bed: &Bed, name: &str, spec: serde_json::Value) {
    let api: Api<RolloutJob> = bed.ns.api();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": spec})),
    )
    .await
    .unwrap();
}

pub(crate) async fn wait_phase(
    bed: &Bed,
    name: &str,
    phase: RolloutPhase,
    timeout_s: u64,
) -> RolloutJob {
    let api: Api<RolloutJob> = bed.ns.api();
    wait_for(
        &format!("RolloutJob {name} to be {phase:?}"),
        Duration::from_secs(timeout_s),
        || async {
            let job = api.get(name).await?;
            let now = job.status.as_ref().map(|s| s.phase);
            Ok((now == Some(phase)).then_some(job))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!("{e:#}");
    })
}

/// The operator's reconciles so far (`edgefleet_rollout_reconcile_total` of the process
/// running now).
async fn reconciles(bed: &Bed) -> anyhow::Result<f64> {
    let addr = bed.operator.metrics_addr().await?.to_string();
    let m = edgefleet_e2e::edge::metrics(&addr, "edgefleet_rollout_reconcile_total")?;
    Ok(m.get("edgefleet_rollout_reconcile_total")
        .copied()
        .unwrap_or(0.0))
}

/// The positive signal a "nothing changed" check needs: the operator has run two more
/// reconciles since this call. Reconciles of one job run one at a time, so the first that
/// started after this moment has finished, acting on everything it saw: a check made after
/// this fails if the operator would have changed something, however slow it is (a sleep
/// passes when the operator is merely slow).
pub(crate) async fn operator_looked_again(bed: &Bed) {
    let start = reconciles(bed).await.unwrap();
    wait_for(
        "the operator to reconcile twice more",
        Duration::from_secs(90),
        || async { Ok((reconciles(bed).await? >= start + 2.0).then_some(())) },
    )
    .await
    .unwrap();
}

/// The DaemonSet's live pods by node.
pub(crate) async fn pods_by_node(bed: &Bed, app: &str) -> BTreeMap<String, Pod> {
    let api: Api<Pod> = bed.ns.api();
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.spec.as_ref()?.node_name.clone()?, p)))
        .collect()
}

pub(crate) fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// When each workload pod (by uid) was first seen deleting, and on which node.
pub(crate) fn deletions(
    events: &[Seen],
    app: &str,
) -> BTreeMap<String, (String, std::time::Instant)> {
    let mut out = BTreeMap::new();
    for e in events {
        if e.deleting && e.labels.get("app").map(String::as_str) == Some(app) {
            out.entry(e.uid.clone()).or_insert((e.node.clone(), e.at));
        }
    }
    out
}

/// How many of the workload's pods were deleted on each node.
pub(crate) fn swaps_per_node(events: &[Seen], app: &str) -> BTreeMap<String, usize> {
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (node, _) in deletions(events, app).values() {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    per_node
}

/// When the first pre-pull pod on each node was seen with its image pulled (Running in kwok).
pub(crate) fn pulls(events: &[Seen]) -> BTreeMap<String, std::time::Instant> {
    let mut out = BTreeMap::new();
    for e in events {
        if e.labels.contains_key(keys::PREPULL_LABEL) && e.running {
            out.entry(e.node.clone()).or_insert(e.at);
        }
    }
    out
}

async fn station_of(client: &Client) -> BTreeMap<String, String> {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| {
            let station = n.labels().get(STATION).cloned().unwrap_or_default();
            (n.name_any(), station)
        })
        .collect()
}

#[tokio::test]
async fn daemonset_rolls_out_station_by_station_pulling_before_every_swap() {
    let bed = bed("rollout").await;
    let nodes = daemonset(&bed, "toll", (REGION, "region-0")).await;
    assert_eq!(
        nodes, 50,
        "the test bed has 5 stations of 10 nodes in region-0"
    );
    create_job(
        &bed,
        "to-v2",
        "toll",
        NEW,
        serde_json::json!({
            "batches": {"size": 10, "groupBy": STATION},
            "prePull": {"parallelism": 10},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Completed, 300).await;
    let status = job.status.unwrap();
    assert_eq!(status.counts.targets, 50);
    assert_eq!(status.counts.updated, 50);
    assert_eq!(status.counts.pre_pulled, 50);
    assert_eq!(status.counts.failed, 0);
    assert_eq!(status.total_batches, 5, "{:#?}", status.batches);
    assert_eq!(status.progress.as_deref(), Some("5/5"));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
    );

    // Every pod is on the new image; every node pulled it before its old pod went.
    let pods = pods_by_node(&bed, "toll").await;
    assert_eq!(pods.len(), 50);
    assert!(pods.values().all(|p| image_of(p) == NEW));
    let events = bed.pods.events();
    let gone = deletions(&events, "toll");
    let pulled = pulls(&events);
    assert_eq!(gone.len(), 50, "one swap per node, no more");
    for (node, at) in gone.values() {
        let pulled_at = pulled
            .get(node)
            .unwrap_or_else(|| panic!("{node} was swapped without a pre-pull"));
        assert!(
            pulled_at <= at,
            "{node} was swapped before its pull finished"
        );
    }
    // One station per batch, stations in order: a station's swaps all come before the next's.
    let stations = station_of(&bed.client).await;
    let mut by_time: Vec<(std::time::Instant, String)> = gone
        .values()
        .map(|(n, at)| (*at, stations[n].clone()))
        .collect();
    by_time.sort();
    let order: Vec<String> = by_time.iter().map(|(_, s)| s.clone()).collect();
    let mut dedup = order.clone();
    dedup.dedup();
    assert_eq!(
        dedup,
        [
            "station-0",
            "station-1",
            "station-2",
            "station-3",
            "station-4"
        ],
        "{order:?}"
    );

    // The DaemonSet is given back with its own strategy, and nothing of ours is left.
    let ds = bed.ns.api::<DaemonSet>().get("toll").await.unwrap();
    let strategy = ds.spec.unwrap().update_strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert!(
        !ds.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(keys::WORKLOAD_LOCK_ANNOTATION)
    );
    prepull_pods_gone(&bed).await;
}

/// The job records its final figures before it gives everything back: its pre-pull pods go
/// with the release (deleted, then gone once the kubelet let them go).
pub(crate) async fn prepull_pods_gone(bed: &Bed) {
    wait_for(
        "the job's pre-pull pods gone after the release",
        Duration::from_secs(60),
        || async {
            let left = bed
                .ns
                .api::<Pod>()
                .list(&ListParams::default().labels(keys::PREPULL_LABEL))
                .await?;
            Ok(left.items.is_empty().then_some(()))
        },
    )
    .await
    .expect("pre-pull pods left behind");
}

#[tokio::test]
async fn a_failed_pull_is_never_swapped_and_the_budget_pauses() {
    let bed = bed("pullfail").await;
    daemonset(&bed, "toll", (STATION, "station-1")).await;
    // Nodes edge-0012 (batch 1) and edge-0015 (batch 2) cannot pull the new image.
    let image = "registry.example/toll/agent:2.0-pull-fail-on-edge-0012.edge-0015";
    let before = pods_by_node(&bed, "toll").await;
    create_job(
        &bed,
        "to-v2",
        "toll",
        image,
        serde_json::json!({
            "batches": {"size": 5},
            "prePull": {"retries": 1, "timeoutSeconds": 30},
            "failurePolicy": {"tolerance": 1, "action": "Pause"},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Paused, 180).await;
    let status = job.status.unwrap();
    assert_eq!(status.counts.failed, 2);
    let paused = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Paused")
        .unwrap();
    assert_eq!(paused.reason, "FailureBudgetExceeded", "{paused:?}");
    let failed: BTreeSet<_> = status
        .recent_failures
        .iter()
        .map(|f| (f.node.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(
        failed,
        BTreeSet::from([("edge-0012", "PullFailed"), ("edge-0015", "PullFailed")])
    );

    // The nodes that could not pull still run their original pod.
    let after = pods_by_node(&bed, "toll").await;
    for node in ["edge-0012", "edge-0015"] {
        assert_eq!(after[node].uid(), before[node].uid(), "{node} was swapped");
        assert_eq!(image_of(&after[node]), OLD);
    }
    // Batch 1's other nodes were updated (one failure is within the budget).
    for node in ["edge-0010", "edge-0011", "edge-0013", "edge-0014"] {
        assert_eq!(image_of(&after[node]), image, "{node}");
    }
}

#[tokio::test]
async fn a_budget_breach_rolls_back_what_was_updated() {
    let bed = bed("rollback").await;
    daemonset(&bed, "toll", (STATION, "station-2")).await;
    let image = "registry.example/toll/agent:2.0-pull-fail-on-edge-0025";
    create_job(
        &bed,
        "to-v2",
        "toll",
        image,
        serde_json::json!({
            "batches": {"size": 5},
            "prePull": {"retries": 0},
            "failurePolicy": {"tolerance": 0, "action": "Rollback"},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::RolledBack, 240).await;
    let status = job.status.unwrap();
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
    );
    let pods = pods_by_node(&bed, "toll").await;
    assert_eq!(pods.len(), 10);
    for (node, pod) in &pods {
        assert_eq!(image_of(pod), OLD, "{node} is not back on the old image");
    }
    let ds = bed.ns.api::<DaemonSet>().get("toll").await.unwrap();
    let spec = ds.spec.unwrap();
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some(OLD)
    );
    assert_eq!(
        spec.update_strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    // Nothing is behind, so the DaemonSet has its strategy back — and nothing moves after.
    assert_eq!(status.behind, 0);
    crate::rollout_end::hold_for(&bed, "toll", OLD).await;
    // Batch 1 (edge-0020..24) had been updated and was swapped back: two swaps each.
    let per_node = swaps_per_node(&bed.pods.events(), "toll");
    for i in 20..25 {
        assert_eq!(
            per_node.get(&format!("edge-00{i}")),
            Some(&2),
            "{per_node:?}"
        );
    }
}

#[tokio::test]
async fn paused_holds_everything_and_resume_finishes() {
    let bed = bed("pause").await;
    daemonset(&bed, "toll", (STATION, "station-3")).await;
    let before = pods_by_node(&bed, "toll").await;
    create_job(
        &bed,
        "to-v2",
        "toll",
        NEW,
        serde_json::json!({"paused": true, "batches": {"size": "50%"}}),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Paused, 60).await;
    let paused = job
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Paused")
        .unwrap();
    assert_eq!(paused.reason, "SpecPaused");
    operator_looked_again(&bed).await;
    let during = pods_by_node(&bed, "toll").await;
    for (node, pod) in &during {
        assert_eq!(pod.uid(), before[node].uid(), "{node} changed while paused");
    }
    assert!(
        bed.ns
            .api::<Pod>()
            .list(&ListParams::default().labels(keys::PREPULL_LABEL))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    patch_job(&bed, "to-v2", serde_json::json!({"paused": false})).await;
    wait_phase(&bed, "to-v2", RolloutPhase::Completed, 120).await;
    assert!(
        pods_by_node(&bed, "toll")
            .await
            .values()
            .all(|p| image_of(p) == NEW)
    );
}

#[tokio::test]
async fn a_second_job_waits_and_abort_hands_the_workload_over() {
    let bed = bed("conflict").await;
    daemonset(&bed, "toll", (STATION, "station-0")).await;
    create_job(
        &bed,
        "first",
        "toll",
        NEW,
        serde_json::json!({"paused": true}),
    )
    .await;
    wait_phase(&bed, "first", RolloutPhase::Paused, 60).await;
    create_job(
        &bed,
        "second",
        "toll",
        "registry.example/toll/agent:3.0",
        serde_json::json!({}),
    )
    .await;
    let second = wait_phase(&bed, "second", RolloutPhase::Pending, 60).await;
    let progressing = second
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(progressing.reason, "WaitingForWorkload");
    assert!(
        progressing.message.contains("first"),
        "{}",
        progressing.message
    );

    // Abort the first: it lets go of the DaemonSet (left OnDelete, so nothing moves without a
    // pre-pull) and the second runs to the end.
    patch_job(&bed, "first", serde_json::json!({"abort": true})).await;
    wait_phase(&bed, "first", RolloutPhase::Aborted, 60).await;
    wait_phase(&bed, "second", RolloutPhase::Completed, 180).await;
    assert!(
        pods_by_node(&bed, "toll")
            .await
            .values()
            .all(|p| image_of(p) == "registry.example/toll/agent:3.0")
    );
}

#[tokio::test]
async fn a_hand_edit_mid_rollout_pauses_the_job() {
    let bed = bed("handedit").await;
    daemonset(&bed, "toll", (STATION, "station-1")).await;
    create_job(
        &bed,
        "to-v2",
        "toll",
        NEW,
        serde_json::json!({
            "batches": {"size": 1},
            "verify": {"readyTimeoutSeconds": 60, "minReadySeconds": 5},
        }),
    )
    .await;
    wait_phase(&bed, "to-v2", RolloutPhase::Progressing, 60).await;
    let ds: Api<DaemonSet> = bed.ns.api();
    ds.patch(
        "toll",
        &PatchParams::default(),
        &Patch::Strategic(serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "registry.example/toll/agent:9.9"}]}}}})),
    )
    .await
    .unwrap();
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Paused, 60).await;
    let paused = job
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Paused")
        .unwrap();
    assert_eq!(paused.reason, "WorkloadChanged");
    assert!(paused.message.contains("agent:9.9"), "{}", paused.message);
    // The operator does not fight the person: the template keeps their image.
    operator_looked_again(&bed).await;
    let template = ds
        .get("toll")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert_eq!(
        template.containers[0].image.as_deref(),
        Some("registry.example/toll/agent:9.9")
    );
}

/// Takes a node out of kwok's hands and sets its Ready condition, as a lost link would.
pub(crate) async fn set_node_ready(client: &Client, node: &str, ready: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let annotation = if ready {
        serde_json::json!("fake")
    } else {
        serde_json::Value::Null
    };
    if !ready {
        let label =
            serde_json::json!({"metadata": {"labels": {edgefleet_e2e::DISTURBED_LABEL: "true"}}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(label))
            .await
            .unwrap();
    }
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": annotation}}})))
        .await
        .unwrap();
    if !ready {
        edgefleet_e2e::mark_node_unknown(&nodes, node, "e2e: link down")
            .await
            .unwrap();
    }
    wait_for(
        &format!("node {node} Ready={ready}"),
        Duration::from_secs(60),
        || async {
            let n = nodes.get(node).await?;
            let is_ready = n
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok((is_ready == ready).then_some(()))
        },
    )
    .await
    .unwrap();
    if ready {
        let label =
            serde_json::json!({"metadata": {"labels": {edgefleet_e2e::DISTURBED_LABEL: null}}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(label))
            .await
            .unwrap();
    }
}

/// Gives a node back to kwok even when the test fails.
pub(crate) struct NodeGuard(pub(crate) String);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(edgefleet_e2e::kubeconfig_path())
            .args([
                "annotate",
                "--overwrite",
                "node",
                &self.0,
                "kwok.x-k8s.io/node=fake",
            ])
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(edgefleet_e2e::kubeconfig_path())
            .args([
                "label",
                "node",
                &self.0,
                &format!("{}-", edgefleet_e2e::DISTURBED_LABEL),
            ])
            .status();
    }
}

#[tokio::test]
async fn explicit_steps_pause_until_approved() {
    let bed = bed("steps").await;
    daemonset(&bed, "toll", (STATION, "station-4")).await;
    create_job(
        &bed,
        "canary",
        "toll",
        NEW,
        serde_json::json!({
            "batches": {"steps": [{"size": 2, "pause": {}}, {"size": "100%"}]},
        }),
    )
    .await;
    let job = wait_phase(&bed, "canary", RolloutPhase::Paused, 90).await;
    let status = job.status.unwrap();
    let paused = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Paused")
        .unwrap();
    assert_eq!(paused.reason, "StepPause");
    assert!(
        paused.message.contains("spec.approvedBatch to 1"),
        "{}",
        paused.message
    );
    assert_eq!((status.current_batch, status.counts.updated), (1, 2));
    // Held: nothing more moves until approved.
    operator_looked_again(&bed).await;
    let updated = pods_by_node(&bed, "toll")
        .await
        .values()
        .filter(|p| image_of(p) == NEW)
        .count();
    assert_eq!(updated, 2);

    patch_job(&bed, "canary", serde_json::json!({"approvedBatch": 1})).await;
    let job = wait_phase(&bed, "canary", RolloutPhase::Completed, 120).await;
    assert_eq!(job.status.unwrap().counts.updated, 10);
}

#[tokio::test]
async fn deleting_a_job_mid_rollout_cleans_up_and_leaves_the_workload_as_it_is() {
    let bed = bed("delete").await;
    daemonset(&bed, "toll", (STATION, "station-3")).await;
    create_job(
        &bed,
        "to-v2",
        "toll",
        NEW,
        serde_json::json!({
            "batches": {"size": 2},
            "verify": {"readyTimeoutSeconds": 60, "minReadySeconds": 30},
        }),
    )
    .await;
    // Mid-batch: pre-pull pods exist or a swap is being verified.
    let api: Api<RolloutJob> = bed.ns.api();
    wait_for(
        "the first batch to start",
        Duration::from_secs(60),
        || async {
            let s = api.get("to-v2").await?.status.unwrap_or_default();
            Ok((s.current_batch == 1).then_some(()))
        },
    )
    .await
    .unwrap();
    let job = api.get("to-v2").await.unwrap();
    assert!(
        job.finalizers()
            .iter()
            .any(|f| f == "edgefleet.io/rollout-cleanup")
    );
    api.delete("to-v2", &Default::default()).await.unwrap();
    wait_for(
        "the RolloutJob to be gone",
        Duration::from_secs(60),
        || async { Ok(api.get_opt("to-v2").await?.is_none().then_some(())) },
    )
    .await
    .unwrap();
    let pods: Api<Pod> = bed.ns.api();
    wait_for(
        "its pre-pull pods to be gone",
        Duration::from_secs(60),
        || async {
            let left = pods
                .list(&ListParams::default().labels(keys::PREPULL_LABEL))
                .await?;
            Ok(left.items.is_empty().then_some(()))
        },
    )
    .await
    .unwrap();
    // The workload is let go of but not rolled on by its own controller: still OnDelete.
    let ds = bed.ns.api::<DaemonSet>().get("toll").await.unwrap();
    assert!(
        !ds.annotations()
            .contains_key(keys::WORKLOAD_LOCK_ANNOTATION)
    );
    assert_eq!(
        ds.spec.unwrap().update_strategy.unwrap().type_.as_deref(),
        Some("OnDelete")
    );
}
