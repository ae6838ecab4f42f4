use super::*;
use crate::prepull::PullState;
use edgefleet_api::rollout::RolloutJobSpec;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const NEW: &str = "toll:2";
const OLD: &str = "toll:1";

fn spec(extra: serde_json::Value) -> RolloutJobSpec {
    let mut base = serde_json::json!({
        "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll"}}},
        "image": NEW,
        "prePull": {"parallelism": 2, "retries": 1, "timeoutSeconds": 60},
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

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

fn pod(node: &str, image: &str) -> PodView {
    PodView {
        name: format!("toll-{node}"),
        uid: format!("uid-{node}"),
        image: image.into(),
        created: t0(),
        ready_since: Some(t0()),
        batch: None,
        chosen_at: None,
        outcome: None,
        terminating: false,
    }
}

fn target(node: &str, group: &str) -> Target {
    Target {
        workload: "DaemonSet/toll".into(),
        node: node.into(),
        image: NEW.into(),
        group: group.into(),
        node_ready: true,
        current: Some(pod(node, OLD)),
        prepull: None,
        slot: Slot::Node,
    }
}

fn chosen(mut t: Target, batch: i32) -> Target {
    if let Some(p) = t.current.as_mut() {
        p.batch = Some(batch.to_string());
        p.chosen_at = Some(t0());
    }
    t
}

fn with_prepull(mut t: Target, state: PullState, attempt: i32) -> Target {
    t.prepull = Some(PrePullView {
        name: format!("pp-{}-{attempt}", t.node),
        batch: member_batch(&Direction::FORWARD, &t)
            .unwrap_or(1)
            .to_string(),
        attempt,
        created: t0(),
        state,
        swapped_at: None,
        outcome: None,
    });
    t
}

fn snapshot<'a>(
    spec: &'a RolloutJobSpec,
    targets: Vec<Target>,
    batch: i32,
    size: i64,
    now: Timestamp,
) -> Snapshot<'a> {
    let mut targets = targets;
    order_targets(&mut targets);
    Snapshot {
        spec,
        direction: Direction::FORWARD,
        targets,
        current_batch: batch,
        current_batch_size: size,
        hold: false,
        stop: false,
        step_pause_pending: true,
        catch_up_open: false,
        now,
    }
}

fn nodes(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| target(&format!("edge-{i:02}"), ""))
        .collect()
}

fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.actions
        .iter()
        .map(|a| match a {
            Action::Choose { .. } => "choose",
            Action::PrePull { .. } => "prepull",
            Action::Swap { .. } => "swap",
            Action::LowerPartition { .. } => "partition",
            Action::SetImage { .. } => "set-image",
            Action::Record { .. } => "record",
            Action::RecordOnPrePull { .. } => "record-pp",
            Action::Finish { .. } => "finish",
            Action::DeletePrePull { .. } => "delete-pp",
            Action::Reopen { .. } => "reopen",
        })
        .collect()
}

#[test]
fn sizes_counts_and_percentages() {
    assert_eq!(scaled(&IntOrString::String("10%".into()), 2000), 200);
    assert_eq!(
        scaled(&IntOrString::String("10%".into()), 5),
        1,
        "rounds up, at least one"
    );
    assert_eq!(scaled(&IntOrString::Int(7), 5), 7);
    assert_eq!(
        tolerance(&IntOrString::String("2%".into()), 120),
        2,
        "rounds down"
    );
    assert_eq!(tolerance(&IntOrString::Int(0), 120), 0);
}

#[test]
fn a_fresh_job_chooses_its_first_batch_in_order() {
    let spec = spec(serde_json::json!({"batches": {"size": 3}}));
    let plan = plan(&snapshot(&spec, nodes(10), 0, 0, t0()));
    assert_eq!(plan.started_batch, Some(1));
    assert_eq!(plan.total_batches, 4);
    let chosen: Vec<_> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Choose { pod, batch } => (pod.as_str(), batch.as_str()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        chosen,
        [
            ("toll-edge-00", "1"),
            ("toll-edge-01", "1"),
            ("toll-edge-02", "1")
        ]
    );
}

#[test]
fn the_batch_total_stays_put_while_batches_run() {
    let spec = spec(serde_json::json!({"batches": {"size": "10%"}}));
    let fresh = plan(&snapshot(&spec, nodes(20), 0, 0, t0()));
    assert_eq!((fresh.started_batch, fresh.total_batches), (Some(1), 10));
    // Batch 1 (2 targets) in flight: still 10 batches, not 1 + 10% of the 18 left.
    let targets: Vec<_> = nodes(20)
        .into_iter()
        .enumerate()
        .map(|(i, t)| if i < 2 { chosen(t, 1) } else { t })
        .collect();
    assert_eq!(
        plan(&snapshot(&spec, targets, 1, 2, t0())).total_batches,
        10
    );
    // Steps: counted from the step the next batch will use.
    let steps = spec_steps();
    let targets: Vec<_> = nodes(10)
        .into_iter()
        .enumerate()
        .map(|(i, t)| if i < 1 { chosen(t, 1) } else { t })
        .collect();
    assert_eq!(
        plan(&snapshot(&steps, targets, 1, 1, t0())).total_batches,
        3
    );
}

fn spec_steps() -> RolloutJobSpec {
    spec(serde_json::json!({"batches": {"steps": [{"size": 1}, {"size": "50%"}]}}))
}

#[test]
fn pulls_respect_parallelism() {
    let spec = spec(serde_json::json!({"batches": {"size": 3}}));
    let targets: Vec<_> = nodes(10)
        .into_iter()
        .enumerate()
        .map(|(i, t)| if i < 3 { chosen(t, 1) } else { t })
        .collect();
    let plan = plan(&snapshot(&spec, targets, 1, 3, t0()));
    assert_eq!(kinds(&plan), ["prepull", "prepull"], "parallelism 2");
    assert_eq!(plan.started_batch, None);
}

#[test]
fn only_a_pulled_node_is_swapped() {
    let spec = spec(serde_json::json!({"batches": {"size": 2}}));
    let failed = PullState::Failed {
        reason: "ErrImagePull".into(),
        message: "not found".into(),
    };
    let targets = vec![
        with_prepull(chosen(target("a", ""), 1), PullState::Pulled, 1),
        with_prepull(chosen(target("b", ""), 1), failed.clone(), 2),
    ];
    let plan = plan(&snapshot(&spec, targets, 1, 2, t0()));
    let swapped: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Swap { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(swapped, ["a"], "never swap a node whose pull failed");
    // b used its one retry: it is failed and its pre-pull pod goes.
    assert!(plan.actions.contains(&Action::Record {
        pod: "toll-b".into(),
        outcome: Outcome {
            kind: OutcomeKind::Failed,
            reason: "PullFailed".into(),
            message: "ErrImagePull: not found".into()
        },
    }));
    assert!(plan.actions.contains(&Action::DeletePrePull {
        name: "pp-b-2".into()
    }));
    assert_eq!(plan.failures.len(), 1);
}

#[test]
fn a_failed_pull_is_retried_as_a_fresh_pod_and_a_stuck_one_times_out() {
    let spec = spec(serde_json::json!({"batches": {"size": 2}}));
    let failed = PullState::Failed {
        reason: "ImagePullBackOff".into(),
        message: String::new(),
    };
    let targets = vec![
        with_prepull(chosen(target("a", ""), 1), failed, 1),
        with_prepull(chosen(target("b", ""), 1), PullState::Pulling, 1),
    ];
    let plan = plan(&snapshot(&spec, targets, 1, 2, at(61)));
    assert_eq!(
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::PrePull { attempt: 2, .. }))
            .count(),
        2,
        "both retried: a failed, b timed out after 60s: {:?}",
        plan.actions
    );
}

#[test]
fn a_swap_is_verified_after_min_ready_and_its_interruption_measured() {
    let spec = spec(serde_json::json!({"batches": {"size": 1}}));
    let mut t = with_prepull(chosen(target("a", ""), 1), PullState::Pulled, 1);
    t.prepull.as_mut().unwrap().swapped_at = Some(at(100));
    let mut new_pod = pod("a", NEW);
    new_pod.name = "toll-a-new".into();
    new_pod.ready_since = Some(at(103));
    t.current = Some(new_pod);
    // minReadySeconds 5: not yet at 106...
    let early = plan(&snapshot(
        &spec,
        vec![t.clone(), target("b", "")],
        1,
        1,
        at(106),
    ));
    assert!(early.actions.is_empty(), "{:?}", early.actions);
    // ... done at 108: finish, and the next batch starts.
    let done = plan(&snapshot(&spec, vec![t, target("b", "")], 1, 1, at(108)));
    assert!(done.actions.contains(&Action::Finish {
        pod: "toll-a-new".into(),
        batch: "1".into(),
        prepull: "pp-a-1".into(),
        interruption: Some(SignedDuration::from_secs(3)),
    }));
    assert_eq!(done.started_batch, Some(2));
}

#[test]
fn a_new_pod_never_ready_fails_the_target() {
    let spec = spec(serde_json::json!({"batches": {"size": 1}}));
    let mut t = with_prepull(chosen(target("a", ""), 1), PullState::Pulled, 1);
    t.prepull.as_mut().unwrap().swapped_at = Some(at(0));
    let mut new_pod = pod("a", NEW);
    new_pod.ready_since = None;
    t.current = Some(new_pod);
    let plan = plan(&snapshot(&spec, vec![t], 1, 1, at(31)));
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Record { outcome, .. } if outcome.reason == "NotReady"))
    );
}

#[test]
fn an_exceeded_budget_starts_nothing_new() {
    let spec = spec(serde_json::json!({"batches": {"size": 2}, "failurePolicy": {"tolerance": 0}}));
    let mut failed = chosen(target("a", ""), 1);
    failed.current.as_mut().unwrap().outcome = Some(Outcome {
        kind: OutcomeKind::Failed,
        reason: "PullFailed".into(),
        message: String::new(),
    });
    let targets = vec![
        failed,
        with_prepull(chosen(target("b", ""), 1), PullState::Pulled, 1),
        target("c", ""),
    ];
    let plan = plan(&snapshot(&spec, targets, 1, 2, t0()));
    assert!(plan.budget_exceeded);
    assert_eq!(kinds(&plan), Vec::<&str>::new(), "no swap, no new batch");
}

#[test]
fn group_by_never_splits_a_group() {
    let spec = spec(serde_json::json!({"batches": {"size": 3, "groupBy": "station"}}));
    let targets = vec![
        target("a1", "s1"),
        target("a2", "s1"),
        target("b1", "s2"),
        target("b2", "s2"),
        target("c1", "s3"),
    ];
    let p = plan(&snapshot(&spec, targets, 0, 0, t0()));
    assert_eq!(
        kinds(&p),
        ["choose", "choose"],
        "s1 only: s1+s2 would be 4 > 3"
    );
    assert_eq!(p.total_batches, 2, "[s1], [s2 s3]");
    let big = spec_with_size(1);
    let targets = vec![target("a1", "s1"), target("a2", "s1"), target("b1", "s2")];
    let p = plan(&snapshot(&big, targets, 0, 0, t0()));
    assert_eq!(
        kinds(&p),
        ["choose", "choose"],
        "a group larger than the batch stays whole"
    );
}

fn spec_with_size(n: i32) -> RolloutJobSpec {
    spec(serde_json::json!({"batches": {"size": n, "groupBy": "station"}}))
}

#[test]
fn offline_nodes_are_skipped_or_waited_for() {
    let skip = spec(serde_json::json!({"batches": {"size": 1}}));
    let mut t = chosen(target("a", ""), 1);
    t.node_ready = false;
    let p = plan(&snapshot(&skip, vec![t.clone()], 1, 1, t0()));
    assert!(
        matches!(&p.actions[..], [Action::Record { outcome, .. }] if outcome.kind == OutcomeKind::Skipped)
    );

    let wait = spec(
        serde_json::json!({"batches": {"size": 1}, "offlineNodes": {"action": "Wait", "waitSeconds": 60}}),
    );
    let p = plan(&snapshot(
        &wait,
        vec![t.clone(), target("b", "")],
        1,
        1,
        at(10),
    ));
    assert_eq!(
        kinds(&p),
        ["choose"],
        "waiting does not hold the next batch back"
    );
    assert!(!p.complete);
    let p = plan(&snapshot(&wait, vec![t], 1, 1, at(61)));
    assert!(
        matches!(&p.actions[..], [Action::Record { outcome, .. }] if outcome.reason == "NodeOffline")
    );
}

/// Restart recovery: the cluster's batch marks win over a lost status write, never the
/// other way round.
#[test]
fn cluster_batch_marks_win_over_a_lost_status_write() {
    let marked = |batch: Option<&str>, n: usize| -> Vec<Target> {
        (0..n)
            .map(|i| {
                let mut t = target(&format!("edge-{i:02}"), "");
                t.current.as_mut().unwrap().batch = batch.map(str::to_string);
                t
            })
            .collect()
    };
    let fwd = Direction::FORWARD;
    // (targets, status batch, status size) -> (batch, size)
    let mut two_ahead = marked(Some("1"), 3);
    two_ahead.extend(marked(Some("2"), 2));
    let cases = [
        // Status says batch 1 of 3; batch 2 was chosen (2 marked), its status write lost.
        (two_ahead.clone(), 1, 3, (2, 2)),
        // Status written: it is right.
        (two_ahead, 2, 3, (2, 3)),
        // Nothing marked yet, nothing started.
        (marked(None, 4), 0, 0, (0, 0)),
        // The status is ahead of the marks (chosen, not yet marked): the status wins.
        (marked(Some("1"), 2), 2, 4, (2, 4)),
        // Marks of the other direction do not count.
        (marked(Some("rb-3"), 2), 1, 2, (1, 2)),
    ];
    for (i, (targets, batch, size, want)) in cases.into_iter().enumerate() {
        assert_eq!(recover_batch(&fwd, &targets, batch, size), want, "case {i}");
    }
    // Rolling back, the rollback's own marks count.
    let rb = marked(Some("rb-1"), 2);
    assert_eq!(recover_batch(&Direction::ROLLBACK, &rb, 0, 0), (1, 2));
}

#[test]
fn a_restart_mid_choice_completes_the_same_batch() {
    let spec = spec(serde_json::json!({"batches": {"size": 3}}));
    let targets: Vec<_> = nodes(6)
        .into_iter()
        .enumerate()
        .map(|(i, t)| if i == 0 { chosen(t, 1) } else { t })
        .collect();
    let p = plan(&snapshot(&spec, targets, 1, 3, t0()));
    let chosen: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Choose { pod, batch } => Some((pod.as_str(), batch.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(chosen, [("toll-edge-01", "1"), ("toll-edge-02", "1")]);
    assert_eq!(p.started_batch, None);
}

#[test]
fn paused_finishes_work_in_flight_but_starts_nothing() {
    let spec = spec(serde_json::json!({"batches": {"size": 2}}));
    let mut done = with_prepull(chosen(target("a", ""), 1), PullState::Pulled, 1);
    done.prepull.as_mut().unwrap().swapped_at = Some(t0());
    done.current = Some(pod("a", NEW));
    let pulled = with_prepull(chosen(target("b", ""), 1), PullState::Pulled, 1);
    let mut snap = snapshot(&spec, vec![done, pulled, target("c", "")], 1, 2, at(60));
    snap.hold = true;
    let p = plan(&snap);
    assert_eq!(kinds(&p), ["finish"]);
}

#[test]
fn done_when_every_target_is_terminal() {
    let spec = spec(serde_json::json!({}));
    let mut skipped = target("b", "");
    skipped.current.as_mut().unwrap().outcome = Some(Outcome {
        kind: OutcomeKind::Skipped,
        reason: "NodeOffline".into(),
        message: String::new(),
    });
    let mut t = target("a", "");
    t.current = Some(pod("a", NEW));
    let p = plan(&snapshot(&spec, vec![t, skipped], 1, 1, at(60)));
    assert!(p.complete);
    assert_eq!((p.counts.updated, p.counts.skipped), (1, 1));
}

/// Catch-up: a node skipped while offline is reopened (so pre-pulled in a batch of its
/// own) when it is back within the window; one still offline keeps the job waiting; after
/// the window the job completes with it behind. Never a swap without a pull.
#[test]
fn offline_targets_are_caught_up_within_the_window() {
    // A failure counts against the budget: tolerate it, so the job is active.
    let spec = spec(serde_json::json!({"failurePolicy": {"tolerance": 1}}));
    let offline = |reason: &str, kind: OutcomeKind, ready: bool| {
        let mut t = chosen(target("b", ""), 1);
        t.node_ready = ready;
        t.current.as_mut().unwrap().outcome = Some(Outcome {
            kind,
            reason: reason.into(),
            message: String::new(),
        });
        t
    };
    let mut done = chosen(target("a", ""), 1);
    done.current.as_mut().unwrap().image = NEW.into();
    // (reason, outcome, node ready, window open) -> (actions, catching up, complete)
    let cases = [
        (
            "NodeOffline",
            OutcomeKind::Skipped,
            true,
            true,
            vec!["reopen"],
            1,
            false,
        ),
        (
            "NodeOffline",
            OutcomeKind::Failed,
            true,
            true,
            vec!["reopen"],
            1,
            false,
        ),
        (
            "NodeOffline",
            OutcomeKind::Skipped,
            false,
            true,
            vec![],
            1,
            false,
        ),
        (
            "NodeOffline",
            OutcomeKind::Skipped,
            true,
            false,
            vec![],
            0,
            true,
        ),
        (
            "PullFailed",
            OutcomeKind::Failed,
            true,
            true,
            vec![],
            0,
            true,
        ),
        ("Blocked", OutcomeKind::Skipped, true, true, vec![], 0, true),
    ];
    for (reason, kind, ready, open, actions, waiting, complete) in cases {
        let targets = vec![done.clone(), offline(reason, kind, ready)];
        let mut snap = snapshot(&spec, targets, 1, 2, at(60));
        snap.catch_up_open = open;
        let p = plan(&snap);
        let case = format!("{reason} {kind:?} ready={ready} open={open}");
        assert_eq!(kinds(&p), actions, "{case}");
        assert_eq!((p.catching_up, p.complete), (waiting, complete), "{case}");
        assert!(p.all_terminal, "{case}");
    }
    // Reopened (outcome cleared): chosen in its batch again, so it pulls first.
    let back = chosen(target("b", ""), 1);
    let mut snap = snapshot(&spec, vec![done.clone(), back], 1, 2, at(60));
    snap.catch_up_open = true;
    let p = plan(&snap);
    assert_eq!(kinds(&p), ["prepull"]);
    assert!(!p.complete);
    // Held or stopping: nothing reopened.
    let mut snap = snapshot(
        &spec,
        vec![done, offline("NodeOffline", OutcomeKind::Skipped, true)],
        1,
        2,
        at(60),
    );
    snap.catch_up_open = true;
    snap.hold = true;
    assert!(plan(&snap).actions.is_empty());
}

#[test]
fn a_node_gone_offline_before_its_swap_is_skipped_not_failed() {
    let spec = spec(serde_json::json!({"batches": {"size": 2}}));
    for state in [PullState::Pulling, PullState::Pulled] {
        let mut t = with_prepull(chosen(target("a", ""), 1), state.clone(), 1);
        t.node_ready = false;
        let p = plan(&snapshot(&spec, vec![t], 1, 1, at(5)));
        assert_eq!(kinds(&p), ["record", "delete-pp"], "{state:?}");
        assert!(
            matches!(&p.failures[..], [(_, o)] if o.kind == OutcomeKind::Skipped && o.reason == NODE_OFFLINE),
            "{:?}",
            p.failures
        );
    }
}

#[test]
fn a_step_pause_is_never_skipped_in_the_reconcile_that_finishes_its_batch() {
    let spec =
        spec(serde_json::json!({"batches": {"steps": [{"size": 1, "pause": {}}, {"size": 1}]}}));
    let mut done = target("a", "");
    done.current = Some(pod("a", NEW));
    done.current.as_mut().unwrap().batch = Some("1".into());
    let snap = snapshot(&spec, vec![done, target("b", "")], 1, 1, at(60));
    let p = plan(&snap);
    assert!(p.current_batch_done);
    assert_eq!(p.started_batch, None);
    // Once the finish is recorded (and the pause released), the next batch starts.
    let mut later = snap.clone();
    later.step_pause_pending = false;
    assert_eq!(plan(&later).started_batch, Some(2));
}

#[test]
fn without_prepull_the_swap_starts_at_once_with_a_record_of_it() {
    let spec = spec(serde_json::json!({"batches": {"size": 2}, "prePull": {"enabled": false}}));
    let targets = vec![chosen(target("a", ""), 1), chosen(target("b", ""), 1)];
    let p = plan(&snapshot(&spec, targets, 1, 2, t0()));
    assert!(
        p.actions
            .iter()
            .all(|a| matches!(a, Action::PrePull { swap: true, image, .. } if image == OLD)),
        "{:?}",
        p.actions
    );
    // With the record in place the old pod goes, whatever the record pod's own state.
    let mut marked = with_prepull(chosen(target("a", ""), 1), PullState::Pulling, 1);
    marked.prepull.as_mut().unwrap().swapped_at = Some(t0());
    let p = plan(&snapshot(&spec, vec![marked], 1, 1, t0()));
    assert_eq!(kinds(&p), ["swap"]);
}
