//! Leader election (operators/kit) against the real API server: two replicas on one Lease,
//! exactly one leads; when the leader stops, the other takes over quickly.

use edgefleet_e2e::{TestNamespace, client, wait_for};
use edgefleet_kit::{LeaderElector, LeaseTiming};
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
