use super::*;
use crate::prepull::PullState;
use edgefleet_api::rollout::RolloutJobSpec;
use jiff::{SignedDuration, Timestamp};

const NEW: &str = "db:2";
const OLD: &str = "db:1";

fn spec(kind: &str, extra: serde_json::Value) -> RolloutJobSpec {
    let mut base = serde_json::json!({
        "target": {"kind": kind, "selector": {"matchLabels": {"app": "db"}}},
        "image": NEW,
        "prePull": {"parallelism": 10, "retries": 0, "timeoutSeconds": 60},
        "verify": {"readyTimeoutSeconds": 30, "minReadySeconds": 5},
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    serde_json::from_value(base).unwrap()
}

fn t0() -> Timestamp {
    "2026-11-21T10:00:00Z".parse().unwrap()
}

fn view(name: &str, image: &str, batch: Option<&str>) -> PodView {
    PodView {
        name: name.into(),
        uid: format!("uid-{name}"),
        image: image.into(),
        created: t0(),
        ready_since: Some(t0()),
        batch: batch.map(Into::into),
        chosen_at: batch.map(|_| t0()),
        outcome: None,
        terminating: false,
    }
}

fn pulled(name: &str, state: PullState) -> PrePullView {
    PrePullView {
        name: name.into(),
        batch: "1".into(),
        attempt: 1,
        created: t0(),
        state,
        swapped_at: None,
        outcome: None,
    }
}

/// Ordinal `n` of StatefulSet db (partition 4), on node `edge-<n>`.
fn ordinal(n: i32, partition: i32, pod: PodView, prepull: Option<PrePullView>) -> Target {
    Target {
        workload: "StatefulSet/db".into(),
        node: format!("edge-{n}"),
        image: NEW.into(),
        group: String::new(),
        node_ready: true,
        current: Some(pod),
        prepull,
        slot: Slot::Ordinal {
            statefulset: "db".into(),
            ordinal: n,
            partition: Some(partition),
        },
    }
}

fn snapshot(spec: &RolloutJobSpec, mut targets: Vec<Target>, batch: i32) -> Snapshot<'_> {
    order_targets(&mut targets);
    let size = i64::try_from(targets.len()).unwrap();
    Snapshot {
        spec,
        direction: Direction::FORWARD,
        targets,
        current_batch: batch,
        current_batch_size: if batch == 0 { 0 } else { size },
        hold: false,
        stop: false,
        step_pause_pending: true,
        catch_up_open: false,
        now: t0() + SignedDuration::from_secs(10),
    }
}

#[test]
fn ordinals_are_batched_from_the_highest_down() {
    let spec = spec("StatefulSet", serde_json::json!({"batches": {"size": 2}}));
    let targets = (0..4)
        .map(|n| ordinal(n, 4, view(&format!("db-{n}"), OLD, None), None))
        .collect();
    let p = plan(&snapshot(&spec, targets, 0));
    let chosen: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Choose { pod, .. } => Some(pod.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(chosen, ["db-3", "db-2"]);
    assert_eq!(p.total_batches, 2);
}

#[test]
fn the_partition_passes_one_verified_ordinal_at_a_time() {
    let spec = spec("StatefulSet", serde_json::json!({"batches": {"size": 4}}));
    let chosen = |n: i32, partition| {
        ordinal(
            n,
            partition,
            view(&format!("db-{n}"), OLD, Some("1")),
            Some(pulled(&format!("pp-{n}"), PullState::Pulled)),
        )
    };
    // Every ordinal pulled: only the highest is swapped.
    let targets = (0..4).map(|n| chosen(n, 4)).collect();
    let p = plan(&snapshot(&spec, targets, 1));
    assert_eq!(
        p.actions,
        [Action::LowerPartition {
            statefulset: "db".into(),
            from: 4,
            to: 3,
            prepull: Some(("pp-3".into(), t0())),
        }]
    );
    // db-3 on the new image but not Ready for minReadySeconds yet: db-2 waits.
    let mut swapped = chosen(3, 3);
    swapped.current = Some(view("db-3", NEW, None));
    swapped.current.as_mut().unwrap().ready_since = Some(t0() + SignedDuration::from_secs(8));
    swapped.prepull.as_mut().unwrap().swapped_at = Some(t0());
    let mut targets: Vec<_> = (0..3).map(|n| chosen(n, 3)).collect();
    targets.push(swapped.clone());
    assert!(plan(&snapshot(&spec, targets, 1)).actions.is_empty());
    // Verified: it is finished, with its interruption, and db-2 goes next.
    swapped.current.as_mut().unwrap().ready_since = Some(t0() + SignedDuration::from_secs(2));
    let mut targets: Vec<_> = (0..3).map(|n| chosen(n, 3)).collect();
    targets.push(swapped);
    let p = plan(&snapshot(&spec, targets, 1));
    assert!(p.actions.contains(&Action::Finish {
        pod: "db-3".into(),
        batch: "1".into(),
        prepull: "pp-3".into(),
        interruption: Some(SignedDuration::from_secs(2)),
    }));
    assert!(p.actions.contains(&Action::LowerPartition {
        statefulset: "db".into(),
        from: 3,
        to: 2,
        prepull: Some(("pp-2".into(), t0())),
    }));
}

#[test]
fn an_ordinal_not_updated_blocks_every_ordinal_below_it() {
    let spec = spec(
        "StatefulSet",
        serde_json::json!({"batches": {"size": 4}, "failurePolicy": {"tolerance": 1}}),
    );
    let mut failed = ordinal(3, 4, view("db-3", OLD, Some("1")), None);
    failed.current.as_mut().unwrap().outcome = Some(Outcome {
        kind: OutcomeKind::Failed,
        reason: "PullFailed".into(),
        message: String::new(),
    });
    let targets = vec![
        failed,
        ordinal(
            2,
            4,
            view("db-2", OLD, Some("1")),
            Some(pulled("pp-2", PullState::Pulled)),
        ),
        ordinal(1, 4, view("db-1", OLD, Some("1")), None),
    ];
    let p = plan(&snapshot(&spec, targets, 1));
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::LowerPartition { .. } | Action::PrePull { .. })),
        "{:?}",
        p.actions
    );
    let blocked: Vec<_> = p
        .failures
        .iter()
        .map(|(t, o)| {
            (
                t.current.as_ref().unwrap().name.as_str(),
                o.reason.as_str(),
                o.kind,
            )
        })
        .collect();
    assert_eq!(
        blocked,
        [
            ("db-2", "Blocked", OutcomeKind::Skipped),
            ("db-1", "Blocked", OutcomeKind::Skipped)
        ]
    );
    assert!(p.actions.contains(&Action::DeletePrePull {
        name: "pp-2".into()
    }));
}

fn deployment(name: &str, nodes: &[(&str, Option<PullState>)], batch: Option<&str>) -> Target {
    Target {
        workload: format!("Deployment/{name}"),
        node: nodes[0].0.into(),
        image: NEW.into(),
        group: String::new(),
        node_ready: true,
        current: Some(view(name, OLD, batch)),
        prepull: None,
        slot: Slot::Workload {
            deployment: name.into(),
            pulls: nodes
                .iter()
                .map(|(node, state)| NodePull {
                    node: (*node).into(),
                    node_ready: true,
                    prepull: state
                        .clone()
                        .map(|s| pulled(&format!("pp-{name}-{node}"), s)),
                })
                .collect(),
        },
    }
}

#[test]
fn a_deployment_pulls_on_each_of_its_nodes_then_is_patched_once() {
    let spec = spec("Deployment", serde_json::json!({"batches": {"size": 1}}));
    let fresh = deployment("api", &[("a", None), ("b", None)], Some("1"));
    let p = plan(&snapshot(&spec, vec![fresh], 1));
    let slots: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::PrePull { slot, node, .. } => Some((node.as_str(), slot.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        slots,
        [
            ("a", Some("Deployment/api@a".to_string())),
            ("b", Some("Deployment/api@b".to_string()))
        ]
    );
    let half = deployment(
        "api",
        &[
            ("a", Some(PullState::Pulled)),
            ("b", Some(PullState::Pulling)),
        ],
        Some("1"),
    );
    assert!(plan(&snapshot(&spec, vec![half], 1)).actions.is_empty());
    let all = deployment(
        "api",
        &[
            ("a", Some(PullState::Pulled)),
            ("b", Some(PullState::Pulled)),
        ],
        Some("1"),
    );
    assert_eq!(
        plan(&snapshot(&spec, vec![all], 1)).actions,
        [Action::SetImage {
            deployment: "api".into(),
            image: NEW.into()
        }]
    );
}

#[test]
fn a_deployment_with_a_node_that_cannot_pull_fails_whole_and_is_never_patched() {
    let spec = spec("Deployment", serde_json::json!({"batches": {"size": 1}}));
    let failed = PullState::Failed {
        reason: "ErrImagePull".into(),
        message: "not found".into(),
    };
    let t = deployment(
        "api",
        &[("a", Some(PullState::Pulled)), ("b", Some(failed))],
        Some("1"),
    );
    let mut snap = snapshot(&spec, vec![t, deployment("web", &[("c", None)], None)], 1);
    snap.current_batch_size = 1;
    let p = plan(&snap);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::SetImage { .. } | Action::Choose { .. })),
        "{:?}",
        p.actions
    );
    assert!(p.actions.iter().any(|a| matches!(a,
        Action::Record { pod, outcome } if pod == "api" && outcome.reason == "PullFailed"
            && outcome.message.contains("node b"))));
    for name in ["pp-api-a", "pp-api-b"] {
        assert!(
            p.actions
                .contains(&Action::DeletePrePull { name: name.into() })
        );
    }
    assert_eq!(p.started_batch, None);
    // Recorded, the failure breaks the budget (tolerance 0): web is never started.
    let mut recorded = snap.clone();
    let d = recorded.targets[0].current.as_mut().unwrap();
    d.outcome = Some(Outcome {
        kind: OutcomeKind::Failed,
        reason: "PullFailed".into(),
        message: String::new(),
    });
    let p = plan(&recorded);
    assert!(p.budget_exceeded);
    assert_eq!(p.started_batch, None);
}

#[test]
fn a_deployment_is_done_once_its_rollout_is_complete_for_min_ready() {
    let spec = spec("Deployment", serde_json::json!({"batches": {"size": 1}}));
    let mut t = deployment("api", &[("a", Some(PullState::Pulled))], Some("1"));
    let d = t.current.as_mut().unwrap();
    d.image = NEW.into();
    d.ready_since = None;
    // Patched, rollout not complete yet: waiting, until the ready timeout (30s) fails it.
    let mut snap = snapshot(&spec, vec![t.clone()], 1);
    assert!(plan(&snap).actions.is_empty());
    snap.now = t0() + SignedDuration::from_secs(31);
    assert!(
        plan(&snap)
            .actions
            .iter()
            .any(|a| matches!(a, Action::Record { outcome, .. } if outcome.reason == "NotReady"))
    );
    // Complete since t0 + 4s: verified at t0 + 10s (minReadySeconds 5), pulls dropped.
    t.current.as_mut().unwrap().ready_since = Some(t0() + SignedDuration::from_secs(4));
    let p = plan(&snapshot(&spec, vec![t], 1));
    assert!(p.complete);
    assert_eq!(
        p.actions,
        [Action::DeletePrePull {
            name: "pp-api-a".into()
        }]
    );
}
