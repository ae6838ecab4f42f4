//! The timing rules every kind of target shares, written once: when a swapped target counts as
//! verified, when a pull has failed, and when waiting for an offline node ends.

use edgefleet_api::rollout::RolloutJobSpec;
use jiff::{SignedDuration, Timestamp};

use crate::prepull::PullState;

use super::model::{PrePullView, Slot, Snapshot};

/// `verify.minReadySeconds`: Ready since `ready_since`, and for that long by `now`.
pub(super) fn verified(
    spec: &RolloutJobSpec,
    ready_since: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    let min_ready = SignedDuration::from_secs(spec.verify.min_ready_seconds);
    ready_since.is_some_and(|since| since + min_ready <= now)
}

/// A pull attempt that failed, or ran past `prePull.timeoutSeconds`: `(reason, message)`.
pub(super) fn pull_failure(
    spec: &RolloutJobSpec,
    pp: &PrePullView,
    now: Timestamp,
) -> Option<(String, String)> {
    let timeout = SignedDuration::from_secs(spec.pre_pull.timeout_seconds);
    match &pp.state {
        PullState::Failed { reason, message } => Some((reason.clone(), message.clone())),
        PullState::Pulling if pp.created + timeout <= now => Some((
            "PullTimeout".to_string(),
            format!("image not pulled within {}s", spec.pre_pull.timeout_seconds),
        )),
        _ => None,
    }
}

/// `offlineNodes: Wait` gave up on a target chosen at `chosen_at`: the wait it allowed, once
/// `offlineNodes.waitSeconds` (default 3600) have passed.
pub(super) fn offline_wait_expired(
    spec: &RolloutJobSpec,
    chosen_at: Option<Timestamp>,
    now: Timestamp,
) -> Option<SignedDuration> {
    let limit = SignedDuration::from_secs(spec.offline_nodes.wait_seconds.unwrap_or(3600));
    chosen_at
        .is_some_and(|at| at + limit <= now)
        .then_some(limit)
}

/// The earliest moment after `snap.now` at which one of these rules may turn for some target:
/// a pull timing out, a swap's ready timeout, `minReadySeconds` passing, an offline wait
/// ending. Nothing else in a plan moves with the clock alone (pod and node changes arrive as
/// watch events), so the job needs no wake before then. A candidate of a target already past
/// it only costs one early reconcile.
pub fn next_deadline(snap: &Snapshot<'_>) -> Option<Timestamp> {
    let spec = snap.spec;
    let pull = SignedDuration::from_secs(spec.pre_pull.timeout_seconds);
    let ready = SignedDuration::from_secs(spec.verify.ready_timeout_seconds);
    let min_ready = SignedDuration::from_secs(spec.verify.min_ready_seconds);
    let offline = SignedDuration::from_secs(spec.offline_nodes.wait_seconds.unwrap_or(3600));
    let pull_ends = |pp: &PrePullView| -> Vec<Timestamp> {
        let mut at = vec![];
        if pp.state == PullState::Pulling {
            at.push(pp.created + pull);
        }
        at.extend(pp.swapped_at.map(|s| s + ready));
        at
    };
    let mut candidates: Vec<Timestamp> = Vec::new();
    for t in &snap.targets {
        if let Some(pod) = &t.current {
            candidates.extend(pod.ready_since.map(|s| s + min_ready));
            candidates.extend(pod.chosen_at.map(|c| c + offline));
            if pod.image == t.image {
                candidates.push(pod.created + ready);
            }
        }
        candidates.extend(t.prepull.iter().flat_map(pull_ends));
        if let Slot::Workload { pulls, .. } = &t.slot {
            candidates.extend(
                pulls
                    .iter()
                    .filter_map(|p| p.prepull.as_ref())
                    .flat_map(pull_ends),
            );
        }
    }
    candidates.into_iter().filter(|at| *at > snap.now).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutJobSpec {
        serde_json::from_value(serde_json::json!({
            "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll"}}},
            "image": "toll:2",
            "prePull": {"timeoutSeconds": 60},
            "verify": {"minReadySeconds": 5},
            "offlineNodes": {"action": "Wait", "waitSeconds": 300},
        }))
        .unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_secs(secs)
    }

    #[test]
    fn verified_after_min_ready() {
        let s = spec();
        for (since, now, want) in [
            (None, 100, false),
            (Some(0), 4, false),
            (Some(0), 5, true),
            (Some(10), 100, true),
        ] {
            assert_eq!(
                verified(&s, since.map(at), at(now)),
                want,
                "{since:?} {now}"
            );
        }
    }

    #[test]
    fn a_pull_fails_by_its_state_or_its_timeout() {
        let s = spec();
        let pp = |state: PullState| PrePullView {
            name: "pp".into(),
            batch: "1".into(),
            attempt: 1,
            created: at(0),
            state,
            swapped_at: None,
            outcome: None,
        };
        let failed = PullState::Failed {
            reason: "ErrImagePull".into(),
            message: "no such image".into(),
        };
        assert_eq!(
            pull_failure(&s, &pp(failed), at(1)),
            Some(("ErrImagePull".into(), "no such image".into()))
        );
        assert_eq!(pull_failure(&s, &pp(PullState::Pulling), at(59)), None);
        assert_eq!(
            pull_failure(&s, &pp(PullState::Pulling), at(60)).map(|f| f.0),
            Some("PullTimeout".into())
        );
        assert_eq!(pull_failure(&s, &pp(PullState::Pulled), at(600)), None);
    }

    /// The next wake is the earliest rule to turn: here the pull timeout (60 s after the
    /// pre-pull pod's creation) before minReadySeconds of the other target; none once every
    /// deadline has passed.
    #[test]
    fn the_next_deadline_is_the_earliest_rule_to_turn() {
        use crate::plan::{Direction, PodView, Target};
        let s = spec();
        let pod = |image: &str, created: i64, ready: Option<i64>| PodView {
            name: "p".into(),
            uid: "u".into(),
            image: image.into(),
            created: at(created),
            ready_since: ready.map(at),
            batch: None,
            chosen_at: None,
            outcome: None,
            terminating: false,
        };
        let target = |current, prepull| Target {
            workload: "DaemonSet/toll".into(),
            node: "n".into(),
            image: "toll:2".into(),
            group: String::new(),
            node_ready: true,
            current,
            prepull,
            slot: Slot::Node,
        };
        let pulling = PrePullView {
            name: "pp".into(),
            batch: "1".into(),
            attempt: 1,
            created: at(100),
            state: PullState::Pulling,
            swapped_at: None,
            outcome: None,
        };
        let snap = |now: i64, targets: Vec<Target>| Snapshot {
            spec: &s,
            direction: Direction::FORWARD,
            targets,
            current_batch: 1,
            current_batch_size: 2,
            hold: false,
            stop: false,
            step_pause_pending: false,
            catch_up_open: true,
            now: at(now),
        };
        let targets = vec![
            target(Some(pod("toll:1", 0, Some(0))), Some(pulling)),
            target(Some(pod("toll:2", 150, Some(158))), None),
        ];
        // Pull timeout at 160; minReady (5 s) of the new pod at 163; its ready timeout later.
        assert_eq!(next_deadline(&snap(120, targets.clone())), Some(at(160)));
        assert_eq!(next_deadline(&snap(160, targets.clone())), Some(at(163)));
        assert_eq!(next_deadline(&snap(100_000, targets)), None);
    }

    #[test]
    fn waiting_for_an_offline_node_ends_after_wait_seconds() {
        let s = spec();
        assert_eq!(offline_wait_expired(&s, None, at(10_000)), None);
        assert_eq!(offline_wait_expired(&s, Some(at(0)), at(299)), None);
        assert_eq!(
            offline_wait_expired(&s, Some(at(0)), at(300)),
            Some(SignedDuration::from_secs(300))
        );
    }
}
