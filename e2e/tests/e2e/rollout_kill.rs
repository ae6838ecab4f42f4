//! The rollout operator killed mid-rollout: only ever the replica holding the Lease (a kill of
//! a standby still waiting for the Lease tests nothing), at steps the cluster shows.

use edgefleet_api::rollout::{RolloutJob, RolloutPhase, keys};
use edgefleet_e2e::operator::Operator;
use edgefleet_e2e::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeSet;
use std::time::Duration;

use crate::rollout::{
    Bed, NEW, OLD, STATION, bed, create_job, daemonset, image_of, pods_by_node, swaps_per_node,
    wait_phase,
};

/// A step of a target's life that the cluster shows while it is in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// Chosen for a batch (its pod marked), no pre-pull pod yet.
    Choosing,
    /// A pre-pull pod, its swap not started.
    Pulling,
    /// Swap started (pre-pull pod marked), no Ready new pod on the node yet.
    Swapping,
    /// The new pod Ready, the target not finished (its pre-pull pod still there).
    Verifying,
}

/// The steps some target of the job is in right now, read from the cluster.
async fn steps_in_progress(bed: &Bed, app: &str, job_uid: &str) -> anyhow::Result<BTreeSet<Step>> {
    let pods = bed
        .ns
        .api::<Pod>()
        .list(&ListParams::default())
        .await?
        .items;
    let mut new_ready: BTreeSet<String> = BTreeSet::new();
    let mut prepulled: BTreeSet<String> = BTreeSet::new();
    for p in &pods {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if p.labels().get("app").map(String::as_str) == Some(app)
            && image_of(p) == NEW
            && ready
            && p.metadata.deletion_timestamp.is_none()
        {
            new_ready.insert(node.clone());
        }
        if p.labels().get(keys::JOB_UID_LABEL).map(String::as_str) == Some(job_uid) {
            prepulled.insert(node);
        }
    }
    let mut steps = BTreeSet::new();
    for p in &pods {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if p.labels().get(keys::JOB_UID_LABEL).map(String::as_str) == Some(job_uid) {
            steps.insert(
                match (
                    p.annotations().contains_key(keys::SWAPPED_AT_ANNOTATION),
                    new_ready.contains(&node),
                ) {
                    (false, _) => Step::Pulling,
                    (true, false) => Step::Swapping,
                    (true, true) => Step::Verifying,
                },
            );
        } else if p.labels().get("app").map(String::as_str) == Some(app)
            && image_of(p) == OLD
            && p.metadata.deletion_timestamp.is_none()
            && p.annotations()
                .get(keys::TARGET_BATCH_ANNOTATION)
                .is_some_and(|b| b.starts_with(job_uid))
            && !prepulled.contains(&node)
        {
            steps.insert(Step::Choosing);
        }
    }
    Ok(steps)
}

/// Who holds the operator's Lease now.
async fn lease_holder(client: &Client, lease: &str) -> anyhow::Result<Option<String>> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), edgefleet_e2e::operator::SYSTEM_NAMESPACE);
    Ok(leases
        .get_opt(lease)
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

/// Kills (SIGKILL) the replica holding the Lease — never a standby still waiting for it —
/// each time the job has written progress since the last kill, `times` times or until the job
/// completes. Returns how many kills hit a Lease holder.
pub(crate) async fn kill_leaders_as_the_job_progresses(
    bed: &mut Bed,
    standby: &mut Operator,
    job: &str,
    times: usize,
) -> usize {
    let api: Api<RolloutJob> = bed.ns.api();
    let lease = bed.operator.lease_name();
    let mut last = String::new();
    let mut kills = 0;
    while kills < times {
        let (operator, standby_id) = (bed.operator.identity(), standby.identity());
        let found = wait_for(
            "job progress under a live Lease holder",
            Duration::from_secs(120),
            || async {
                let j = api.get(job).await?;
                if j.status
                    .as_ref()
                    .is_some_and(|s| s.phase == RolloutPhase::Completed)
                {
                    return Ok(Some(None));
                }
                let version = j.metadata.resource_version.clone().unwrap_or_default();
                let holder = lease_holder(&bed.client, &lease).await?;
                Ok(match holder {
                    Some(h) if version != last && (h == operator || h == standby_id) => {
                        Some(Some((h, version)))
                    }
                    _ => None,
                })
            },
        )
        .await
        .unwrap();
        let Some((holder, version)) = found else {
            break;
        };
        if holder == bed.operator.identity() {
            bed.operator.restart().unwrap();
        } else {
            standby.restart().unwrap();
        }
        last = version;
        kills += 1;
    }
    kills
}

/// Two replicas; the one holding the Lease is killed (SIGKILL) while a target is choosing,
/// pulling, swapping or verifying — never a standby still waiting for the Lease — until each
/// kind of step has been hit. The job ends with every node swapped exactly once.
#[tokio::test]
async fn an_operator_killed_mid_batch_resumes_without_a_double_or_missed_swap() {
    let mut bed = bed("restart").await;
    let mut standby = Operator::start_replica("rollout", &bed.ns.name)
        .await
        .unwrap();
    daemonset(&bed, "toll", (STATION, "station-2")).await;
    create_job(
        &bed,
        "to-v2",
        "toll",
        NEW,
        serde_json::json!({
            "batches": {"size": 4},
            "prePull": {"parallelism": 2},
            "verify": {"readyTimeoutSeconds": 120, "minReadySeconds": 3},
        }),
    )
    .await;
    let api: Api<RolloutJob> = bed.ns.api();
    let uid = wait_for("the job's uid", Duration::from_secs(30), || async {
        Ok(api.get("to-v2").await?.metadata.uid)
    })
    .await
    .unwrap();
    let lease = bed.operator.lease_name();
    let mut hit: BTreeSet<Step> = BTreeSet::new();
    let mut kills = Vec::new();
    while hit.len() < 4 {
        // A step not hit yet in progress, while a live replica of ours holds the Lease.
        let found = wait_for(
            &format!("a step other than {hit:?} under a Lease holder"),
            Duration::from_secs(120),
            || async {
                if api
                    .get("to-v2")
                    .await?
                    .status
                    .is_some_and(|s| s.phase == RolloutPhase::Completed)
                {
                    anyhow::bail!("the job completed before every step was hit: {hit:?}");
                }
                let Some(holder) = lease_holder(&bed.client, &lease).await? else {
                    return Ok(None);
                };
                if holder != bed.operator.identity() && holder != standby.identity() {
                    return Ok(None); // a killed replica's Lease, not expired yet
                }
                let steps = steps_in_progress(&bed, "toll", &uid).await?;
                let fresh: Vec<Step> = steps.difference(&hit).copied().collect();
                Ok((!fresh.is_empty()).then_some((holder, fresh)))
            },
        )
        .await
        .unwrap();
        let (holder, fresh) = found;
        if holder == bed.operator.identity() {
            bed.operator.restart().unwrap();
        } else {
            standby.restart().unwrap();
        }
        kills.push((holder, fresh.clone()));
        hit.extend(fresh);
    }
    eprintln!("killed the Lease holder at: {kills:?}");
    wait_phase(&bed, "to-v2", RolloutPhase::Completed, 240).await;
    let pods = pods_by_node(&bed, "toll").await;
    assert_eq!(pods.len(), 10);
    assert!(
        pods.values().all(|p| image_of(p) == NEW),
        "a node was missed"
    );
    let per_node = swaps_per_node(&bed.pods.events(), "toll");
    assert_eq!(per_node.len(), 10);
    assert!(
        per_node.values().all(|n| *n == 1),
        "a node was swapped twice: {per_node:?}"
    );
}

/// The rollout operator's test-only stall point (see `edgefleet_rollout::stall`).
const STALL_ENV: &str = "EDGEFLEET_ROLLOUT_TEST_STALL";

/// The leader killed while it gives the workloads of an ended job back (stalled there by the
/// test-only `EDGEFLEET_ROLLOUT_TEST_STALL=released:40`, after the DaemonSet is unlocked): the
/// new leader only finishes the release. The figures a person watches stay exactly as they
/// were (they were once recomputed from the released workloads, their marks gone), and only
/// then do the phase turn Completed and `WorkloadsReleased` True.
#[tokio::test]
async fn a_leader_killed_while_releasing_an_ended_job_leaves_its_final_figures() {
    let mut bed = bed("released").await;
    bed.operator.set_env(STALL_ENV, Some("released:40"));
    bed.operator.restart().unwrap();
    daemonset(&bed, "toll", (STATION, "station-2")).await;
    create_job(
        &bed,
        "to-v2",
        "toll",
        NEW,
        serde_json::json!({"batches": {"size": 5}}),
    )
    .await;
    let api: Api<RolloutJob> = bed.ns.api();
    let ds_api: Api<k8s_openapi::api::apps::v1::DaemonSet> = bed.ns.api();
    let lease = bed.operator.lease_name();
    // Released (the lock gone from the DaemonSet) but not recorded as released: stalled.
    let before = wait_for(
        "the DaemonSet given back, the release not recorded yet",
        Duration::from_secs(180),
        || async {
            let ds = ds_api.get("toll").await?;
            let locked = ds
                .annotations()
                .contains_key(keys::WORKLOAD_LOCK_ANNOTATION);
            let job = api.get("to-v2").await?;
            let recorded = job.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "WorkloadsReleased" && c.status == "True")
            });
            anyhow::ensure!(
                !recorded,
                "the release was recorded: the stall did not hold"
            );
            let swapped = pods_by_node(&bed, "toll")
                .await
                .values()
                .all(|p| image_of(p) == NEW);
            Ok((!locked && swapped && job.status.is_some()).then_some(job))
        },
    )
    .await
    .unwrap();
    let holder = lease_holder(&bed.client, &lease).await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some(bed.operator.identity().as_str()),
        "the stalled process holds the Lease"
    );
    bed.operator.set_env(STALL_ENV, None);
    bed.operator.restart().unwrap();

    let after = wait_for(
        "the new leader to record the release",
        Duration::from_secs(90),
        || async {
            let job = api.get("to-v2").await?;
            let released = job.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "WorkloadsReleased" && c.status == "True")
            });
            Ok(released.then_some(job))
        },
    )
    .await
    .unwrap();
    let (b, a) = (before.status.unwrap(), after.status.unwrap());
    // Final figures before the release; the ended phase only once the workloads are back.
    assert_eq!(b.ending_phase, Some(RolloutPhase::Completed));
    assert_ne!(
        b.phase,
        RolloutPhase::Completed,
        "Completed before the release"
    );
    assert_eq!((a.phase, a.ending_phase), (RolloutPhase::Completed, None));
    assert_eq!(a.counts, b.counts, "the job's figures moved");
    assert_eq!(a.counts.updated, 10);
    let figures = |s: &edgefleet_api::rollout::RolloutJobStatus| -> Vec<_> {
        s.batches
            .iter()
            .map(|x| (x.index, x.counts.clone()))
            .collect()
    };
    assert_eq!(figures(&a), figures(&b), "a batch's figures moved");
    let ds = ds_api.get("toll").await.unwrap();
    assert!(
        !ds.annotations()
            .contains_key(keys::WORKLOAD_LOCK_ANNOTATION),
        "given back"
    );
}
