//! After the end: the promise "no pod is swapped on a node that has not pulled the new image"
//! holds for the workload's whole life, not only while the job runs — whatever way the job
//! ended (Completed with failures or skips, paused by the budget, Aborted, RolledBack, Failed,
//! deleted, the operator gone), and when skipped nodes come back.
//!
//! Each test watches the pods for 30 s after the end ([`hold_for`]) with evidence that the
//! watch and the DaemonSet controller are live, not a bare sleep.

use crate::rollout::{
    Bed, NEW, NodeGuard, OLD, STATION, bed, create_job, daemonset, image_of, patch_job,
    pods_by_node, pulls, set_node_ready, wait_phase,
};
use edgefleet_api::rollout::{RolloutJob, RolloutPhase, keys};
use edgefleet_e2e::operator::SYSTEM_NAMESPACE;
use edgefleet_e2e::podlog::Seen;
use edgefleet_e2e::{run, wait_for};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long each test watches after an end.
const HOLD: Duration = Duration::from_secs(30);

/// A DaemonSet `name` on exactly `nodes` (by hostname), running `OLD`, each pull taking
/// `pull_seconds`, all pods Ready.
async fn daemonset_on(bed: &Bed, name: &str, nodes: &[&str], pull_seconds: u32) {
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {"edgefleet.io/sim-pull-seconds": pull_seconds.to_string()}
                },
                "spec": {
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{
                            "key": "kubernetes.io/hostname", "operator": "In", "values": nodes
                        }]}]
                    }}},
                    "containers": [{"name": "agent", "image": OLD}]
                }
            }
        }
    }))
    .unwrap();
    let api: Api<DaemonSet> = bed.ns.api();
    api.create(&PostParams::default(), &ds).await.unwrap();
    wait_for(
        &format!("DaemonSet {name} Ready on {} nodes", nodes.len()),
        Duration::from_secs(120),
        || async {
            let s = api.get(name).await?.status.unwrap_or_default();
            Ok((s.number_ready as usize == nodes.len()
                && s.desired_number_scheduled as usize == nodes.len())
            .then_some(()))
        },
    )
    .await
    .unwrap();
}

/// The DaemonSet's update strategy type.
async fn strategy(bed: &Bed, app: &str) -> String {
    let ds = bed.ns.api::<DaemonSet>().get(app).await.unwrap();
    ds.spec
        .and_then(|s| s.update_strategy)
        .and_then(|s| s.type_)
        .unwrap_or_default()
}

/// Deletions of `app` pods not on `image`, by pod uid: (node, when first seen deleting).
fn old_pod_deletions(
    events: &[Seen],
    app: &str,
    image: &str,
) -> BTreeMap<String, (String, Instant)> {
    let mut out = BTreeMap::new();
    for e in events {
        if e.deleting && e.image != image && e.labels.get("app").map(String::as_str) == Some(app) {
            out.entry(e.uid.clone()).or_insert((e.node.clone(), e.at));
        }
    }
    out
}

/// The invariant, checked over the whole log: every `app` pod that was not on `image` and was
/// deleted had a pre-pull seen pulled on its node before. Returns how many deletions it checked.
pub(crate) fn assert_pulled_before_every_swap(bed: &Bed, app: &str, image: &str) -> usize {
    let events = bed.pods.events();
    let pulled = pulls(&events);
    let deleted = old_pod_deletions(&events, app, image);
    for (uid, (node, at)) in &deleted {
        assert!(
            pulled.get(node).is_some_and(|p| p < at),
            "pod {uid} on {node} was deleted without a pull on the node before (pulls: {pulled:?})"
        );
    }
    deleted.len()
}

/// Watches `app`'s pods for [`HOLD`] after its job ended and asserts that no pod not on
/// `image` whose node has not pulled it is deleted — by us or by the DaemonSet controller.
/// Live, not a sleep: the DaemonSet controller has observed the DaemonSet's last change before
/// the window opens, and every 10 s a probe label put on one pod must come through the pod
/// watch. Returns the nodes whose pod was behind (not on `image`) when the window opened.
pub(crate) async fn hold_for(bed: &Bed, app: &str, image: &str) -> BTreeSet<String> {
    let ds_api: Api<DaemonSet> = bed.ns.api();
    wait_for(
        &format!("the DaemonSet controller to observe DaemonSet {app}'s last change"),
        Duration::from_secs(60),
        || async {
            let ds = ds_api.get(app).await?;
            let observed = ds.status.and_then(|s| s.observed_generation);
            Ok((observed >= ds.metadata.generation).then_some(()))
        },
    )
    .await
    .unwrap();
    let before = pods_by_node(bed, app).await;
    let behind: BTreeMap<String, String> = before
        .iter()
        .filter(|(_, p)| image_of(p) != image)
        .map(|(node, p)| (p.uid().unwrap_or_default(), node.clone()))
        .collect();
    let pulled_before = pulls(&bed.pods.events());
    let start = Instant::now();
    let pods: Api<Pod> = bed.ns.api();
    let mut probe = 0;
    while start.elapsed() < HOLD {
        tokio::time::sleep(Duration::from_secs(10).min(HOLD.saturating_sub(start.elapsed()))).await;
        probe += 1;
        let nonce = format!("{app}-{probe}");
        // Any live pod of the workload carries the probe.
        let Some(target) = pods_by_node(bed, app).await.into_values().next() else {
            panic!("DaemonSet {app} has no pod left");
        };
        let patch = serde_json::json!({"metadata": {"labels": {"e2e-probe": nonce}}});
        pods.patch(
            &target.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .unwrap();
        wait_for(
            &format!("the pod watch to see probe {nonce}"),
            Duration::from_secs(30),
            || async {
                Ok(bed
                    .pods
                    .events()
                    .iter()
                    .any(|e| e.labels.get("e2e-probe") == Some(&nonce))
                    .then_some(()))
            },
        )
        .await
        .unwrap();
    }
    let events = bed.pods.events();
    let pulled = pulls(&events);
    for (uid, (node, at)) in old_pod_deletions(&events, app, image) {
        if at < start || !behind.contains_key(&uid) {
            continue;
        }
        let pulled_first = pulled.get(&node).is_some_and(|p| *p < at);
        assert!(
            pulled_first,
            "after the job ended, pod {uid} on {node} (not on {image}, node not pulled) was deleted {:?} into the watch",
            at.duration_since(start)
        );
    }
    // The pods of nodes that never pulled are the very same pods.
    let after = pods_by_node(bed, app).await;
    for (uid, node) in &behind {
        if pulled_before.contains_key(node) || pulled.contains_key(node) {
            continue;
        }
        assert_eq!(
            after.get(node).and_then(|p| p.uid()).as_deref(),
            Some(uid.as_str()),
            "the pod of {node}, whose node never pulled {image}, was replaced"
        );
    }
    behind.into_values().collect()
}

/// The job's `NodesBehind` condition: (status, reason, message).
fn nodes_behind(job: &RolloutJob) -> (String, String, String) {
    let c = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "NodesBehind"))
        .unwrap_or_else(|| panic!("no NodesBehind condition: {:?}", job.status));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_job_completed_with_failed_pulls_leaves_them_held_after_it_is_deleted_and_the_operator_is_gone()
 {
    let mut bed = bed("endcomplete").await;
    daemonset(&bed, "toll", (STATION, "station-0")).await;
    let image = "registry.example/toll/agent:2.0-pull-fail-on-edge-0003.edge-0007";
    create_job(
        &bed,
        "to-v2",
        "toll",
        image,
        serde_json::json!({
            "batches": {"size": 5},
            "prePull": {"retries": 0, "timeoutSeconds": 30},
            "failurePolicy": {"tolerance": 2, "action": "Pause"},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Completed, 240).await;
    let status = job.status.clone().unwrap();
    assert_eq!((status.counts.updated, status.counts.failed), (8, 2));
    assert_eq!(status.behind, 2);
    let (state, reason, message) = nodes_behind(&job);
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "Held"),
        "{message}"
    );
    for needle in ["edge-0003", "edge-0007", "OnDelete", "spec.image"] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    // `kubectl get rj` says how many are behind.
    let table = run("kubectl", &["get", "rj", "-n", &bed.ns.name], None).unwrap();
    assert!(table.contains("BEHIND"), "{table}");
    let row = table.lines().find(|l| l.starts_with("to-v2")).unwrap();
    assert!(row.split_whitespace().any(|c| c == "2"), "{table}");
    // The DaemonSet stays OnDelete: its controller never swaps the two that did not pull.
    assert_eq!(strategy(&bed, "toll").await, "OnDelete");
    let behind = hold_for(&bed, "toll", image).await;
    assert_eq!(
        behind,
        BTreeSet::from(["edge-0003".to_string(), "edge-0007".to_string()])
    );

    // The job deleted (its finalizer lets go of the DaemonSet): still held.
    let jobs: Api<RolloutJob> = bed.ns.api();
    jobs.delete("to-v2", &Default::default()).await.unwrap();
    wait_for(
        "the RolloutJob to be gone",
        Duration::from_secs(60),
        || async { Ok(jobs.get_opt("to-v2").await?.is_none().then_some(())) },
    )
    .await
    .unwrap();
    let ds = bed.ns.api::<DaemonSet>().get("toll").await.unwrap();
    assert!(
        !ds.annotations()
            .contains_key(keys::WORKLOAD_LOCK_ANNOTATION)
    );
    assert!(
        ds.annotations()
            .contains_key(keys::ORIGINAL_STRATEGY_ANNOTATION),
        "the strategy to restore is kept for the job that catches up"
    );
    assert_eq!(strategy(&bed, "toll").await, "OnDelete");
    // The operator uninstalled: nothing of ours runs, and still nothing swaps them.
    bed.operator.kill();
    hold_for(&bed, "toll", image).await;
    assert_eq!(strategy(&bed, "toll").await, "OnDelete");
}

#[tokio::test]
async fn budget_paused_then_aborted_jobs_swap_no_node_that_did_not_pull() {
    let bed = bed("endabort").await;
    daemonset(&bed, "toll", (STATION, "station-1")).await;
    let image = "registry.example/toll/agent:2.0-pull-fail-on-edge-0012";
    create_job(
        &bed,
        "to-v2",
        "toll",
        image,
        serde_json::json!({
            "batches": {"size": 5},
            "prePull": {"retries": 0, "timeoutSeconds": 30},
            "failurePolicy": {"tolerance": 0, "action": "Pause"},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Paused, 180).await;
    let (state, reason, _) = nodes_behind(&job);
    assert_eq!((state.as_str(), reason.as_str()), ("True", "Held"));
    let behind = hold_for(&bed, "toll", image).await;
    assert!(behind.contains("edge-0012"), "{behind:?}");

    patch_job(&bed, "to-v2", serde_json::json!({"abort": true})).await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Aborted, 60).await;
    assert!(job.status.as_ref().unwrap().behind >= 5, "{:?}", job.status);
    assert_eq!(strategy(&bed, "toll").await, "OnDelete");
    let behind = hold_for(&bed, "toll", image).await;
    // Batch 2 was never started: its five nodes and edge-0012 stay on the old image.
    assert!(
        behind.len() >= 6 && behind.contains("edge-0012"),
        "{behind:?}"
    );
    assert_pulled_before_every_swap(&bed, "toll", image);
}

#[tokio::test]
async fn a_job_that_fails_mid_rollout_leaves_the_rest_held() {
    let bed = bed("endfailed").await;
    daemonset(&bed, "toll", (STATION, "station-4")).await;
    let image = "registry.example/toll/agent:2.0-pull-fail-on-edge-0041";
    create_job(
        &bed,
        "to-v2",
        "toll",
        image,
        serde_json::json!({
            "batches": {"steps": [{"size": 5, "pause": {}}, {"size": "100%"}]},
            "prePull": {"retries": 0, "timeoutSeconds": 30},
            "failurePolicy": {"tolerance": 1, "action": "Pause"},
        }),
    )
    .await;
    wait_phase(&bed, "to-v2", RolloutPhase::Paused, 180).await;
    // The record of the previous image lost, then a rollback asked: the job cannot run.
    let ds: Api<DaemonSet> = bed.ns.api();
    ds.patch(
        "toll",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {keys::PREVIOUS_IMAGE_ANNOTATION: null}}})),
    )
    .await
    .unwrap();
    patch_job(&bed, "to-v2", serde_json::json!({"rollback": true})).await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Failed, 60).await;
    // Batch 1 had edge-0040..44 (edge-0041 failed); edge-0045..49 were never started.
    assert_eq!(job.status.as_ref().unwrap().behind, 6, "{:?}", job.status);
    let (state, reason, message) = nodes_behind(&job);
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "Held"),
        "{message}"
    );
    assert_eq!(strategy(&bed, "toll").await, "OnDelete");
    let behind = hold_for(&bed, "toll", image).await;
    assert_eq!(behind.len(), 6, "{behind:?}");
    assert_pulled_before_every_swap(&bed, "toll", image);
}

/// Skipped nodes that come back: within the catch-up window they are pre-pulled, then
/// swapped; after it (window 0 here) they stay held, and their return swaps nothing.
#[tokio::test]
async fn offline_nodes_are_caught_up_with_a_pull_or_held_after_the_window() {
    let bed = bed("offline").await;
    let nodes = [
        "edge-0055",
        "edge-0056",
        "edge-0057",
        "edge-0058",
        "edge-0059",
    ];
    for app in ["expired", "skipper", "waiter"] {
        daemonset_on(&bed, app, &nodes, 1).await;
    }
    let offline = "edge-0059";
    set_node_ready(&bed.client, offline, false).await;
    let _restore = NodeGuard(offline.to_string());

    // Window 0: Completed at once, the offline node held behind.
    create_job(
        &bed,
        "expire",
        "expired",
        NEW,
        serde_json::json!({"batches": {"size": 2}, "catchUp": {"windowSeconds": 0}}),
    )
    .await;
    let job = wait_phase(&bed, "expire", RolloutPhase::Completed, 180).await;
    let status = job.status.clone().unwrap();
    assert_eq!(
        (status.counts.updated, status.counts.skipped, status.behind),
        (4, 1, 1)
    );
    assert!(
        status
            .recent_failures
            .iter()
            .any(|f| f.node == offline && f.reason == "NodeOffline"),
        "{:?}",
        status.recent_failures
    );
    assert_eq!(strategy(&bed, "expired").await, "OnDelete");

    // Default window: the job waits for the node (Skip), or waits for it in its batch (Wait).
    create_job(
        &bed,
        "skip",
        "skipper",
        NEW,
        serde_json::json!({"batches": {"size": 2}}),
    )
    .await;
    create_job(
        &bed,
        "wait",
        "waiter",
        NEW,
        serde_json::json!({
            "batches": {"size": 2},
            "offlineNodes": {"action": "Wait", "waitSeconds": 300},
        }),
    )
    .await;
    let api: Api<RolloutJob> = bed.ns.api();
    for name in ["skip", "wait"] {
        wait_for(
            &format!("{name}: 4 targets updated"),
            Duration::from_secs(180),
            || async {
                let s = api.get(name).await?.status.unwrap_or_default();
                Ok((s.counts.updated == 4).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    let skip = wait_for("skip: catching up", Duration::from_secs(60), || async {
        let job = api.get("skip").await?;
        let catching_up = job.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Progressing" && c.reason == "CatchingUp")
        });
        Ok(catching_up.then_some(job))
    })
    .await
    .unwrap();
    let status = skip.status.unwrap();
    assert_eq!(status.phase, RolloutPhase::Progressing);
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("spec.catchUp.windowSeconds")),
        "{:?}",
        status.message
    );
    let old_uid = |pods: BTreeMap<String, Pod>| pods[offline].uid().unwrap();
    let expired_uid = old_uid(pods_by_node(&bed, "expired").await);

    // The node comes back.
    set_node_ready(&bed.client, offline, true).await;
    // Past the window: its return swaps nothing.
    let behind = hold_for(&bed, "expired", NEW).await;
    assert!(behind.contains(offline), "{behind:?}");
    assert_eq!(old_uid(pods_by_node(&bed, "expired").await), expired_uid);
    assert_eq!(strategy(&bed, "expired").await, "OnDelete");
    // Within it: caught up, pre-pull first, then the strategy is given back.
    for (name, app) in [("skip", "skipper"), ("wait", "waiter")] {
        let job = wait_phase(&bed, name, RolloutPhase::Completed, 180).await;
        let status = job.status.unwrap();
        assert_eq!((status.counts.updated, status.behind), (5, 0), "{name}");
        let pods = pods_by_node(&bed, app).await;
        assert!(pods.values().all(|p| image_of(p) == NEW), "{app}");
        assert_eq!(assert_pulled_before_every_swap(&bed, app, NEW), 5, "{app}");
        assert_eq!(strategy(&bed, app).await, "RollingUpdate", "{app}");
    }
    assert!(pulls(&bed.pods.events()).contains_key(offline));
}

/// Kills the operator only once it holds its Lease (it is the one acting), as a crash would.
async fn kill_lease_holder(bed: &mut Bed) {
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), SYSTEM_NAMESPACE);
    let identity = bed.operator.identity();
    let name = bed.operator.lease_name();
    wait_for(
        &format!("{identity} to hold Lease {name}"),
        Duration::from_secs(60),
        || async {
            let holder = leases
                .get_opt(&name)
                .await?
                .and_then(|l| l.spec?.holder_identity);
            Ok((holder.as_deref() == Some(identity.as_str())).then_some(()))
        },
    )
    .await
    .unwrap();
    bed.operator.restart().unwrap();
}

#[tokio::test]
async fn nodes_going_not_ready_mid_batch_and_a_killed_leader_never_swap_without_a_pull() {
    let mut bed = bed("endkill").await;
    let nodes = [
        "edge-0046",
        "edge-0047",
        "edge-0048",
        "edge-0049",
        "edge-0050",
        "edge-0051",
        "edge-0052",
        "edge-0053",
        "edge-0054",
    ];
    daemonset_on(&bed, "toll", &nodes, 8).await;
    create_job(
        &bed,
        "to-v2",
        "toll",
        NEW,
        serde_json::json!({
            "batches": {"size": 3, "maxUnavailable": 1},
            "prePull": {"retries": 1, "timeoutSeconds": 120},
        }),
    )
    .await;
    // Batch 2 is edge-0049..51, swapped one at a time (each new pod takes 8 s to start):
    // edge-0050 loses its link once pulled, while it waits for its swap, and the leader is
    // killed right then.
    let offline = "edge-0050";
    wait_for(
        "edge-0050 pulled while edge-0049 swaps",
        Duration::from_secs(180),
        || async {
            let events = bed.pods.events();
            let swapping: BTreeSet<String> = crate::rollout::deletions(&events, "toll")
                .into_values()
                .map(|(node, _)| node)
                .collect();
            let pulled = pulls(&events).contains_key(offline);
            if swapping.contains(offline) {
                panic!("{offline} was swapped before the test could take it offline");
            }
            Ok((pulled && swapping.contains("edge-0049")).then_some(()))
        },
    )
    .await
    .unwrap();
    set_node_ready(&bed.client, offline, false).await;
    let _restore = NodeGuard(offline.to_string());
    kill_lease_holder(&mut bed).await;
    // Batch 3 (edge-0052..54): killed again once its pulls are done, at the swaps.
    wait_for("a pull on edge-0052", Duration::from_secs(180), || async {
        Ok(pulls(&bed.pods.events())
            .contains_key("edge-0052")
            .then_some(()))
    })
    .await
    .unwrap();
    kill_lease_holder(&mut bed).await;
    let api: Api<RolloutJob> = bed.ns.api();
    wait_for(
        "8 targets updated, the offline one waited for",
        Duration::from_secs(240),
        || async {
            let s = api.get("to-v2").await?.status.unwrap_or_default();
            Ok((s.counts.updated == 8 && s.phase == RolloutPhase::Progressing).then_some(()))
        },
    )
    .await
    .unwrap();
    // While it is away its pod stays, and the job does not end.
    let before = pods_by_node(&bed, "toll").await[offline].uid();
    kill_lease_holder(&mut bed).await;
    set_node_ready(&bed.client, offline, true).await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Completed, 240).await;
    let status = job.status.unwrap();
    assert_eq!((status.counts.updated, status.behind), (9, 0));
    let after = pods_by_node(&bed, "toll").await;
    assert!(
        after.values().all(|p| image_of(p) == NEW),
        "a node was missed"
    );
    assert_ne!(after[offline].uid(), before);
    // Every old pod deleted after its node's pull, each node swapped once.
    assert_eq!(assert_pulled_before_every_swap(&bed, "toll", NEW), 9);
    let deleted = crate::rollout::deletions(&bed.pods.events(), "toll");
    assert_eq!(deleted.len(), 9, "a node was swapped twice: {deleted:?}");
    assert_eq!(strategy(&bed, "toll").await, "RollingUpdate");
}
