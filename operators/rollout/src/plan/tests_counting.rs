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

/// One target's life, as successive reconciles see it: every figure of the job and of its
/// batch only grows, and the two views agree (issue 9: `pre-pulled` read 20, 10, 20 while
/// old pods were terminating).
#[test]
fn every_figure_grows_through_a_targets_life_and_the_batch_agrees() {
    let spec: RolloutJobSpec = serde_json::from_value(serde_json::json!({
        "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll"}}},
        "image": "toll:2",
        "verify": {"minReadySeconds": 5},
    }))
    .unwrap();
    let t0: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
    let pod = |image: &str, batch: bool, ready: bool, terminating: bool| PodView {
        name: format!("p-{image}"),
        uid: format!("u-{image}"),
        image: image.into(),
        created: t0,
        ready_since: ready.then_some(t0),
        batch: batch.then(|| "1".into()),
        chosen_at: batch.then_some(t0),
        outcome: None,
        terminating,
    };
    let prepull = |state: PullState, swapped: bool| PrePullView {
        name: "pp".into(),
        batch: "1".into(),
        attempt: 1,
        created: t0,
        state,
        swapped_at: swapped.then_some(t0),
        outcome: None,
    };
    let stages: Vec<(&str, Option<PodView>, Option<PrePullView>)> = vec![
        ("chosen", Some(pod("toll:1", true, true, false)), None),
        (
            "pulling",
            Some(pod("toll:1", true, true, false)),
            Some(prepull(PullState::Pulling, false)),
        ),
        (
            "pulled",
            Some(pod("toll:1", true, true, false)),
            Some(prepull(PullState::Pulled, false)),
        ),
        (
            "old pod terminating",
            Some(pod("toll:1", true, true, true)),
            Some(prepull(PullState::Pulled, true)),
        ),
        ("old pod gone", None, Some(prepull(PullState::Pulled, true))),
        (
            "new pod starting",
            Some(pod("toll:2", false, false, false)),
            Some(prepull(PullState::Pulled, true)),
        ),
        (
            "new pod ready",
            Some(pod("toll:2", false, true, false)),
            Some(prepull(PullState::Pulled, true)),
        ),
        ("finished", Some(pod("toll:2", true, true, false)), None),
    ];
    let mut last = TargetCounts::default();
    for (i, (stage, pod, pp)) in stages.into_iter().enumerate() {
        let snap = Snapshot {
            spec: &spec,
            direction: Direction::FORWARD,
            targets: vec![Target {
                workload: "DaemonSet/toll".into(),
                node: "a".into(),
                image: "toll:2".into(),
                group: "st-1".into(),
                node_ready: true,
                current: pod,
                prepull: pp,
                slot: Slot::Node,
            }],
            current_batch: 1,
            current_batch_size: 1,
            hold: false,
            stop: false,
            step_pause_pending: false,
            catch_up_open: false,
            now: t0 + SignedDuration::from_secs(10 * i64::try_from(i).unwrap()),
        };
        let p = plan(&snap);
        let c = p.counts.clone();
        for (name, before, now) in [
            ("prePulled", last.pre_pulled, c.pre_pulled),
            ("updated", last.updated, c.updated),
            ("ready", last.ready, c.ready),
            ("failed", last.failed, c.failed),
            ("skipped", last.skipped, c.skipped),
        ] {
            assert!(now >= before, "{stage}: {name} went from {before} to {now}");
        }
        assert_eq!(p.current_batch_counts, c, "{stage}: batch and job disagree");
        assert_eq!(p.current_batch_group.as_deref(), Some("st-1"), "{stage}");
        last = c;
    }
    assert_eq!(
        (last.pre_pulled, last.updated, last.ready),
        (1, 1, 1),
        "a finished target counts everywhere"
    );
}

#[test]
fn a_batch_names_its_groups() {
    let t = |g: &str| Target {
        workload: "DaemonSet/toll".into(),
        node: "a".into(),
        image: "toll:2".into(),
        group: g.into(),
        node_ready: true,
        current: None,
        prepull: None,
        slot: Slot::Node,
    };
    let groups = |gs: &[&str]| batch_group(gs.iter().map(|g| t(g)).collect::<Vec<_>>().iter());
    assert_eq!(groups(&[]), None);
    assert_eq!(groups(&["", ""]), None, "not grouping");
    assert_eq!(
        groups(&["st-2", "st-1", "st-2"]).as_deref(),
        Some("st-1,st-2")
    );
    assert_eq!(
        groups(&["e", "d", "c", "b", "a"]).as_deref(),
        Some("a,b,c,+2")
    );
}
