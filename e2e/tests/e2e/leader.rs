//! Leader election (operators/kit) against the real API server: two replicas on one Lease,
//! exactly one leads; when the leader stops, the other takes over quickly. And in an operator:
//! only the leader acts.

use edgefleet_api::rollout::RolloutJob;
use edgefleet_e2e::operator::{Operator, SYSTEM_NAMESPACE};
use edgefleet_e2e::{FIELD_MANAGER, TestNamespace, client, install_crds, wait_for};
use edgefleet_kit::{LeaderElector, LeaseTiming};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn exactly_one_leader_and_a_fast_handover() {
    let client = client().await.unwrap();
    let ns = TestNamespace::new(&client, "lease").await.unwrap();
    let timing = || LeaseTiming::new(4, 2).unwrap();
    let a = LeaderElector::new(client.clone(), &ns.name, "e2e", "replica-a", timing());
    let b = LeaderElector::new(client.clone(), &ns.name, "e2e", "replica-b", timing());
    let (lead_a, lead_b) = (a.subscribe(), b.subscribe());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let task_a = tokio::spawn(a.run(stop_a.clone()));
    let task_b = tokio::spawn(b.run(stop_b.clone()));

    wait_for("a leader", Duration::from_secs(20), || async {
        Ok((*lead_a.borrow() || *lead_b.borrow()).then_some(()))
    })
    .await
    .unwrap();
    // For a few lease terms, never two leaders.
    for _ in 0..40 {
        let (x, y) = (*lead_a.borrow(), *lead_b.borrow());
        assert!(!(x && y), "two leaders at once");
        assert!(x || y, "leadership lost with both replicas healthy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (stop_leader, follower, leader_task) = if *lead_a.borrow() {
        (stop_a, lead_b.clone(), task_a)
    } else {
        (stop_b, lead_a.clone(), task_b)
    };
    stop_leader.cancel();
    leader_task.await.unwrap();
    // Released on shutdown, the lease moves well before it would have expired (4 s).
    let start = std::time::Instant::now();
    wait_for(
        "the follower to take over",
        Duration::from_secs(10),
        || async { Ok((*follower.borrow()).then_some(())) },
    )
    .await
    .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "handover took {:?}",
        start.elapsed()
    );
}

/// `<prefix>_*` samples of an operator's /metrics (labels kept in the name).
async fn scrape(operator: &Operator, prefix: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let addr = operator.metrics_addr().await?;
    edgefleet_e2e::edge::metrics(&addr.to_string(), prefix)
}

fn reconciles(m: &BTreeMap<String, f64>) -> f64 {
    m.get("edgefleet_rollout_reconcile_total")
        .copied()
        .unwrap_or(0.0)
}

async fn holder(leases: &Api<Lease>, name: &str) -> anyhow::Result<Option<String>> {
    Ok(leases
        .get_opt(name)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// Two replicas of the rollout operator, as the chart's Deployment runs them (2 replicas, the
/// chart's ServiceAccount and RBAC, one Lease): only the Lease holder reconciles; the other
/// serves metrics and waits. Killed without a goodbye, the leader's Lease expires and the other
/// replica takes over and acts.
#[tokio::test]
async fn only_the_lease_holder_reconciles_rolloutjobs() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "leader-acts").await.unwrap();
    let mut a = Operator::start_replica("rollout", &ns.name).await.unwrap();
    let mut b = Operator::start_replica("rollout", &ns.name).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let lease = a.lease_name();
    let (id_a, id_b) = (a.identity(), b.identity());

    let leader_id = wait_for("a Lease holder", Duration::from_secs(30), || async {
        Ok(holder(&leases, &lease)
            .await?
            .filter(|h| *h == id_a || *h == id_b))
    })
    .await
    .unwrap();
    let (leader, follower) = if leader_id == id_a {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // A RolloutJob whose selector matches nothing: reconciled (a status) without side effects.
    let jobs: Api<RolloutJob> = ns.api();
    let job = |generation_marker: &str| {
        serde_json::json!({
            "apiVersion": "edgefleet.io/v1alpha1",
            "kind": "RolloutJob",
            "metadata": {"name": "nothing", "annotations": {"e2e/marker": generation_marker}},
            "spec": {
                "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "no-such-app"}}},
                "image": "registry.example/none:1.0",
                "batches": {"size": 1}
            }
        })
    };
    jobs.patch(
        "nothing",
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(job("1")),
    )
    .await
    .unwrap();
    wait_for(
        "the leader to reconcile the RolloutJob (status written)",
        Duration::from_secs(30),
        || async {
            let status = jobs.get("nothing").await?.status;
            Ok(status.and_then(|s| s.observed_generation).map(|_| ()))
        },
    )
    .await
    .unwrap();
    let leader_metrics = scrape(leader, "edgefleet_rollout_").await.unwrap();
    let follower_metrics = scrape(follower, "edgefleet_rollout_").await.unwrap();
    assert!(reconciles(&leader_metrics) >= 1.0, "{leader_metrics:?}");
    assert_eq!(leader_metrics["edgefleet_rollout_leader"], 1.0);
    assert_eq!(reconciles(&follower_metrics), 0.0, "{follower_metrics:?}");
    assert_eq!(follower_metrics["edgefleet_rollout_leader"], 0.0);
    // The status was written by the Lease holder's field manager, and nobody else's.
    let managers: Vec<String> = jobs
        .get_status("nothing")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["edgefleet-rollout"], "status writers");

    // The leader dies without releasing its Lease (SIGKILL, as an OOM kill or a lost node).
    leader.kill();
    let follower_id = follower.identity();
    wait_for(
        "the follower to take the Lease over",
        Duration::from_secs(30),
        || async {
            Ok(holder(&leases, &lease)
                .await?
                .filter(|h| *h == follower_id)
                .map(|_| ()))
        },
    )
    .await
    .unwrap();
    jobs.patch(
        "nothing",
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(job("2")),
    )
    .await
    .unwrap();
    wait_for(
        "the new leader to reconcile",
        Duration::from_secs(30),
        || async {
            let m = scrape(follower, "edgefleet_rollout_").await?;
            Ok((reconciles(&m) >= 1.0 && m["edgefleet_rollout_leader"] == 1.0).then_some(()))
        },
    )
    .await
    .unwrap();
}
