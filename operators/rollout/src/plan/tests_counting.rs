use super::*;
use edgefleet_api::rollout::RolloutJobSpec;
use jiff::{SignedDuration, Timestamp};

#[test]
fn finished_targets_stay_counted_as_pre_pulled() {
    let spec: RolloutJobSpec = serde_json::from_value(serde_json::json!({
        "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll"}}},
        "image": "toll:2",
    }))
    .unwrap();
    let now: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
    let t = Target {
        workload: "DaemonSet/toll".into(),
        node: "a".into(),
        image: "toll:2".into(),
        group: String::new(),
        node_ready: true,
        current: Some(PodView {
            name: "p".into(),
            uid: "u".into(),
            image: "toll:2".into(),
            created: now,
            ready_since: Some(now),
            batch: Some("1".into()),
            chosen_at: Some(now),
            outcome: None,
            terminating: false,
        }),
        prepull: None,
        slot: Slot::Node,
    };
    let snap = Snapshot {
        spec: &spec,
        direction: Direction::FORWARD,
        targets: vec![t],
        current_batch: 1,
        current_batch_size: 1,
        hold: false,
        stop: false,
        step_pause_pending: false,
        catch_up_open: false,
        now: now + SignedDuration::from_secs(10),
    };
    assert_eq!(plan(&snap).counts.pre_pulled, 1);
}
