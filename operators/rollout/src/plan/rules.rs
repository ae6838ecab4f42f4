//! The timing rules every kind of target shares, written once: when a swapped target counts as
//! verified, when a pull has failed, and when waiting for an offline node ends.

use edgefleet_api::rollout::RolloutJobSpec;
use jiff::{SignedDuration, Timestamp};

use crate::prepull::PullState;

use super::model::PrePullView;

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
