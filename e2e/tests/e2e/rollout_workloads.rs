//! Deployment and StatefulSet targets of the rollout operator, against the real control plane
//! (kwok simulates the pulls, as in [`crate::rollout`]).

use crate::rollout::{
    Bed, NEW, OLD, STATION, bed, create_job, deletions, image_of, pulls, wait_phase,
};
use crate::rollout_kill::kill_leaders_as_the_job_progresses;
use edgefleet_api::rollout::{RolloutPhase, keys};
use edgefleet_e2e::operator::Operator;
use edgefleet_e2e::podlog::Seen;
use edgefleet_e2e::wait_for;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A pod template running `OLD`, labelled `app`, with the extra pod spec fields given.
fn template(app: &str, extra_spec: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({"containers": [{"name": "agent", "image": OLD}]});
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::json!({
        "metadata": {"labels": {"app": app}, "annotations": {"edgefleet.io/sim-pull-seconds": "1"}},
        "spec": spec
    })
}

/// A Deployment `name` (labels `app=name`, `tier=tier`) with `replicas`, all Ready.
async fn deployment(
    bed: &Bed,
    name: &str,
    tier: &str,
    replicas: i32,
    extra_spec: serde_json::Value,
) {
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name, "tier": tier}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": template(name, extra_spec),
        }
    }))
    .unwrap();
    let api: Api<Deployment> = bed.ns.api();
    api.create(&PostParams::default(), &d).await.unwrap();
    wait_for(
        &format!("Deployment {name} Available"),
        Duration::from_secs(90),
        || async {
            let s = api.get(name).await?.status.unwrap_or_default();
            Ok((s.available_replicas == Some(replicas)).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// A StatefulSet `name` with `replicas` pods on distinct nodes of `station`, all Ready.
async fn statefulset(bed: &Bed, name: &str, replicas: i32, station: &str) {
    let spread = serde_json::json!({
        "nodeSelector": {STATION: station},
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"app": name}},
            "topologyKey": "kubernetes.io/hostname"
        }]}}
    });
    let sts: StatefulSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, spread),
        }
    }))
    .unwrap();
    let api: Api<StatefulSet> = bed.ns.api();
    api.create(&PostParams::default(), &sts).await.unwrap();
    wait_for(
        &format!("StatefulSet {name} Ready"),
        Duration::from_secs(90),
        || async {
            let s = api.get(name).await?.status.unwrap_or_default();
            Ok((s.ready_replicas == Some(replicas)).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// The live pods labelled `app=<app>`, by name.
async fn pods_by_name(bed: &Bed, app: &str) -> BTreeMap<String, Pod> {
    bed.ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect()
}

/// When a pod of `app` was first seen with `image`.
fn first_seen_with(events: &[Seen], app: &str, image: &str) -> Option<Instant> {
    events
        .iter()
        .filter(|e| e.labels.get("app").map(String::as_str) == Some(app) && e.image == image)
        .map(|e| e.at)
        .min()
}

/// The nodes the pods of `app` ran on with `image`.
fn nodes_with(events: &[Seen], app: &str, image: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e.labels.get("app").map(String::as_str) == Some(app) && e.image == image)
        .filter(|e| !e.node.is_empty())
        .map(|e| e.node.clone())
        .collect()
}

fn strategy(sts: &StatefulSet) -> serde_json::Value {
    serde_json::to_value(sts.spec.as_ref().unwrap().update_strategy.clone()).unwrap()
}

#[tokio::test]
async fn deployments_roll_out_in_batches_pulling_on_their_nodes_before_each_patch() {
    let bed = bed("deploy").await;
    let apps = ["api-0", "api-1", "api-2", "api-3"];
    for app in apps {
        deployment(
            &bed,
            app,
            "api",
            2,
            serde_json::json!({"nodeSelector": {STATION: "station-3"}}),
        )
        .await;
    }
    create_job(
        &bed,
        "to-v2",
        "",
        NEW,
        serde_json::json!({
            "target": {"kind": "Deployment", "selector": {"matchLabels": {"tier": "api"}}},
            "batches": {"size": 2},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Completed, 240).await;
    let status = job.status.unwrap();
    assert_eq!(status.counts.targets, 4, "one target per Deployment");
    assert_eq!(
        (
            status.counts.updated,
            status.counts.pre_pulled,
            status.counts.failed
        ),
        (4, 4, 0)
    );
    assert_eq!(status.total_batches, 2, "{:#?}", status.batches);

    let events = bed.pods.events();
    let pulled = pulls(&events);
    let mut first_new = BTreeMap::new();
    for app in apps {
        // Every node an old pod ran on had pulled the image before the first new pod existed.
        let new_at = first_seen_with(&events, app, NEW).unwrap_or_else(|| panic!("{app}"));
        for node in nodes_with(&events, app, OLD) {
            let at = pulled
                .get(&node)
                .unwrap_or_else(|| panic!("{app}: {node} was never pre-pulled"));
            assert!(*at <= new_at, "{app} was patched before {node} pulled");
        }
        first_new.insert(app, new_at);
        let pods = pods_by_name(&bed, app).await;
        assert_eq!(pods.len(), 2);
        assert!(pods.values().all(|p| image_of(p) == NEW), "{app}");
    }
    // In order of name, two per batch: api-2 and api-3 start after api-0 and api-1.
    let batch_1 = first_new["api-0"].max(first_new["api-1"]);
    assert!(first_new["api-2"] > batch_1 && first_new["api-3"] > batch_1);

    // Given back: no lock, no marks, the user's strategy untouched.
    let api: Api<Deployment> = bed.ns.api();
    for app in apps {
        let d = api.get(app).await.unwrap();
        let annotations = d.annotations();
        for key in [
            keys::WORKLOAD_LOCK_ANNOTATION,
            keys::TARGET_BATCH_ANNOTATION,
            keys::PREVIOUS_IMAGE_ANNOTATION,
        ] {
            assert!(!annotations.contains_key(key), "{app} keeps {key}");
        }
        let strategy = d.spec.unwrap().strategy.unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    }
    crate::rollout::prepull_pods_gone(&bed).await;
}

#[tokio::test]
async fn a_deployment_on_a_node_that_cannot_pull_is_never_patched() {
    let bed = bed("deployfail").await;
    // One replica each, pinned: a on edge-0030, b on edge-0031 (cannot pull), c on edge-0032.
    for (app, node) in [("a", "edge-0030"), ("b", "edge-0031"), ("c", "edge-0032")] {
        deployment(&bed, app, "edge", 1, serde_json::json!({"nodeName": node})).await;
    }
    let image = "registry.example/toll/agent:2.0-pull-fail-on-edge-0031";
    create_job(
        &bed,
        "to-v2",
        "",
        image,
        serde_json::json!({
            "target": {"kind": "Deployment", "selector": {"matchLabels": {"tier": "edge"}}},
            "batches": {"size": 1},
            "prePull": {"retries": 0},
            "failurePolicy": {"tolerance": 0, "action": "Pause"},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Paused, 120).await;
    let status = job.status.unwrap();
    assert_eq!((status.counts.updated, status.counts.failed), (1, 1));
    let failure = &status.recent_failures[0];
    assert_eq!(
        (failure.workload.as_str(), failure.reason.as_str()),
        ("Deployment/b", "PullFailed"),
        "{failure:?}"
    );
    assert!(failure.message.contains("edge-0031"), "{failure:?}");
    let paused = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Paused")
        .unwrap();
    assert_eq!(paused.reason, "FailureBudgetExceeded");

    // b's template never changed, nor did c's (the budget stopped the job before it).
    crate::rollout::operator_looked_again(&bed).await;
    let api: Api<Deployment> = bed.ns.api();
    let template_image = |d: Deployment| {
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(template_image(api.get("a").await.unwrap()), image);
    assert_eq!(template_image(api.get("b").await.unwrap()), OLD);
    assert_eq!(template_image(api.get("c").await.unwrap()), OLD);
    let events = bed.pods.events();
    assert!(first_seen_with(&events, "b", image).is_none());
    assert!(deletions(&events, "b").is_empty(), "b's pod was replaced");
}

#[tokio::test]
async fn a_statefulset_rolls_out_by_partition_from_its_highest_ordinal() {
    let bed = bed("sts").await;
    statefulset(&bed, "db", 5, "station-4").await;
    let before = pods_by_name(&bed, "db").await;
    create_job(
        &bed,
        "to-v2",
        "db",
        NEW,
        serde_json::json!({
            "target": {"kind": "StatefulSet", "selector": {"matchLabels": {"app": "db"}}},
            "batches": {"size": 2},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Completed, 240).await;
    let status = job.status.unwrap();
    assert_eq!(status.counts.targets, 5, "one target per ordinal");
    assert_eq!((status.counts.updated, status.counts.failed), (5, 0));
    assert_eq!(status.total_batches, 3);

    // Each old pod went once, highest ordinal first, after its node pulled the image.
    let events = bed.pods.events();
    let pulled = pulls(&events);
    let gone = deletions(&events, "db");
    let mut order: Vec<(Instant, String)> = Vec::new();
    for (name, pod) in &before {
        let uid = pod.uid().unwrap();
        let (node, at) = gone
            .get(&uid)
            .unwrap_or_else(|| panic!("{name} was never swapped"));
        let pulled_at = pulled
            .get(node)
            .unwrap_or_else(|| panic!("{name} on {node} was swapped without a pre-pull"));
        assert!(pulled_at <= at, "{name} was swapped before {node} pulled");
        order.push((*at, name.clone()));
    }
    order.sort();
    let names: Vec<&str> = order.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["db-4", "db-3", "db-2", "db-1", "db-0"]);
    assert_eq!(gone.len(), 5, "one swap per ordinal");
    assert!(
        pods_by_name(&bed, "db")
            .await
            .values()
            .all(|p| image_of(p) == NEW)
    );
    // Given back with its own strategy: no partition left.
    let sts = bed.ns.api::<StatefulSet>().get("db").await.unwrap();
    assert!(
        !sts.annotations()
            .contains_key(keys::WORKLOAD_LOCK_ANNOTATION)
    );
    let s = strategy(&sts);
    assert_eq!(s["type"], "RollingUpdate", "{s}");
    assert!(
        s.pointer("/rollingUpdate/partition").is_none_or(|p| p == 0),
        "{s}"
    );
}

#[tokio::test]
async fn a_statefulset_ordinal_that_cannot_pull_blocks_the_ordinals_below_it() {
    let bed = bed("stsfail").await;
    statefulset(&bed, "db", 4, "station-2").await;
    let before = pods_by_name(&bed, "db").await;
    let node_of = |name: &str| {
        before[name]
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .clone()
            .unwrap()
    };
    let image = format!(
        "registry.example/toll/agent:2.0-pull-fail-on-{}",
        node_of("db-2")
    );
    create_job(
        &bed,
        "to-v2",
        "db",
        &image,
        serde_json::json!({
            "target": {"kind": "StatefulSet", "selector": {"matchLabels": {"app": "db"}}},
            "batches": {"size": 4},
            "prePull": {"retries": 0},
            "failurePolicy": {"tolerance": 1},
        }),
    )
    .await;
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Completed, 180).await;
    let status = job.status.unwrap();
    assert_eq!(
        (
            status.counts.updated,
            status.counts.failed,
            status.counts.skipped
        ),
        (1, 1, 2),
        "{:?}",
        status.recent_failures
    );
    let reasons: BTreeSet<(String, &str)> = status
        .recent_failures
        .iter()
        .map(|f| (f.node.clone(), f.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            (node_of("db-2"), "PullFailed"),
            (node_of("db-1"), "Blocked"),
            (node_of("db-0"), "Blocked"),
        ])
    );
    // Only db-3 was swapped; the others keep their pods, held back by the partition even
    // after the job let go of the StatefulSet: checked once the StatefulSet controller has
    // acted on the released spec (its observedGeneration), not after a guessed sleep.
    let sts_api: Api<StatefulSet> = bed.ns.api();
    wait_for(
        "the StatefulSet controller to observe the released spec",
        Duration::from_secs(60),
        || async {
            let sts = sts_api.get("db").await?;
            let observed = sts.status.as_ref().and_then(|s| s.observed_generation);
            Ok((observed >= sts.metadata.generation).then_some(()))
        },
    )
    .await
    .unwrap();
    let after = pods_by_name(&bed, "db").await;
    assert_eq!(image_of(&after["db-3"]), image);
    for name in ["db-2", "db-1", "db-0"] {
        assert_eq!(after[name].uid(), before[name].uid(), "{name} was swapped");
        assert_eq!(image_of(&after[name]), OLD);
    }
    let sts = bed.ns.api::<StatefulSet>().get("db").await.unwrap();
    assert!(
        !sts.annotations()
            .contains_key(keys::WORKLOAD_LOCK_ANNOTATION)
    );
    assert_eq!(
        strategy(&sts).pointer("/rollingUpdate/partition"),
        Some(&serde_json::json!(3))
    );
}

#[tokio::test]
async fn an_operator_killed_mid_statefulset_rollout_swaps_each_ordinal_once() {
    let mut bed = bed("stsrestart").await;
    statefulset(&bed, "db", 4, "station-1").await;
    let before = pods_by_name(&bed, "db").await;
    create_job(
        &bed,
        "to-v2",
        "db",
        NEW,
        serde_json::json!({
            "target": {"kind": "StatefulSet", "selector": {"matchLabels": {"app": "db"}}},
            "batches": {"size": 2},
        }),
    )
    .await;
    // Only the Lease holder is killed, each time the job moved on (a kill of a standby
    // waiting for the Lease tests nothing).
    let mut standby = Operator::start_replica("rollout", &bed.ns.name)
        .await
        .unwrap();
    let kills = kill_leaders_as_the_job_progresses(&mut bed, &mut standby, "to-v2", 4).await;
    assert!(
        kills >= 2,
        "only {kills} kills hit a Lease holder before the job ended"
    );
    wait_phase(&bed, "to-v2", RolloutPhase::Completed, 240).await;
    let after = pods_by_name(&bed, "db").await;
    assert_eq!(after.len(), 4);
    assert!(
        after.values().all(|p| image_of(p) == NEW),
        "an ordinal was missed"
    );
    // Each original pod went exactly once, and no new pod was replaced again.
    let gone = deletions(&bed.pods.events(), "db");
    assert_eq!(gone.len(), 4, "{gone:?}");
    for pod in before.values() {
        assert!(gone.contains_key(&pod.uid().unwrap()));
    }
}

#[tokio::test]
async fn a_statefulset_budget_breach_rolls_its_updated_ordinals_back_by_partition() {
    let bed = bed("stsrollback").await;
    statefulset(&bed, "db", 4, "station-0").await;
    let before = pods_by_name(&bed, "db").await;
    let node_of = |name: &str| {
        before[name]
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .clone()
            .unwrap()
    };
    // Batch 1 (db-3, db-2) goes through; batch 2's db-1 cannot pull.
    let image = format!(
        "registry.example/toll/agent:2.0-pull-fail-on-{}",
        node_of("db-1")
    );
    create_job(
        &bed,
        "to-v2",
        "db",
        &image,
        serde_json::json!({
            "target": {"kind": "StatefulSet", "selector": {"matchLabels": {"app": "db"}}},
            "batches": {"size": 2},
            "prePull": {"retries": 0},
            "failurePolicy": {"tolerance": 0, "action": "Rollback"},
        }),
    )
    .await;
    wait_phase(&bed, "to-v2", RolloutPhase::RolledBack, 240).await;
    let after = pods_by_name(&bed, "db").await;
    assert!(after.values().all(|p| image_of(p) == OLD), "not all back");
    // db-3 and db-2 were swapped there and back; db-1 and db-0 never.
    let events = bed.pods.events();
    let mut swaps: BTreeMap<String, String> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.deleting && e.labels.get("app").map(String::as_str) == Some("db"))
    {
        swaps.entry(e.uid.clone()).or_insert_with(|| e.name.clone());
    }
    let mut per_name: BTreeMap<String, usize> = BTreeMap::new();
    for name in swaps.values() {
        *per_name.entry(name.clone()).or_default() += 1;
    }
    assert_eq!(
        per_name,
        BTreeMap::from([("db-2".to_string(), 2), ("db-3".to_string(), 2)])
    );
    let sts = bed.ns.api::<StatefulSet>().get("db").await.unwrap();
    let s = strategy(&sts);
    assert!(
        s.pointer("/rollingUpdate/partition").is_none_or(|p| p == 0),
        "{s}"
    );
    assert_eq!(
        sts.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some(OLD)
    );
}

#[tokio::test]
async fn an_operator_killed_mid_deployment_rollout_patches_each_deployment_once() {
    let mut bed = bed("deployrestart").await;
    let apps = ["w-0", "w-1", "w-2", "w-3"];
    for app in apps {
        deployment(
            &bed,
            app,
            "w",
            1,
            serde_json::json!({"nodeSelector": {STATION: "station-4"}}),
        )
        .await;
    }
    create_job(
        &bed,
        "to-v2",
        "",
        NEW,
        serde_json::json!({
            "target": {"kind": "Deployment", "selector": {"matchLabels": {"tier": "w"}}},
            "batches": {"size": 1},
        }),
    )
    .await;
    // Only the Lease holder is killed, each time the job moved on (a kill of a standby
    // waiting for the Lease tests nothing).
    let mut standby = Operator::start_replica("rollout", &bed.ns.name)
        .await
        .unwrap();
    let kills = kill_leaders_as_the_job_progresses(&mut bed, &mut standby, "to-v2", 4).await;
    assert!(
        kills >= 2,
        "only {kills} kills hit a Lease holder before the job ended"
    );
    let job = wait_phase(&bed, "to-v2", RolloutPhase::Completed, 240).await;
    assert_eq!(job.status.unwrap().counts.updated, 4);
    let events = bed.pods.events();
    let pulled = pulls(&events);
    for app in apps {
        let pods = pods_by_name(&bed, app).await;
        assert!(
            pods.values().all(|p| image_of(p) == NEW),
            "{app} was missed"
        );
        // One old pod replaced once; nothing replaced the new one again.
        assert_eq!(deletions(&events, app).len(), 1, "{app}");
        let new_at = first_seen_with(&events, app, NEW).unwrap();
        for node in nodes_with(&events, app, OLD) {
            assert!(
                pulled.get(&node).is_some_and(|at| *at <= new_at),
                "{app}: {node}"
            );
        }
    }
}
