//! Targets left behind: pods not on their workload's template image, because their node did
//! not pull it (pull failed, skipped, offline, job stopped before them).
//!
//! Guarantee: whatever way a job ends, such a pod is never swapped by the workload's own
//! controller — a DaemonSet stays `OnDelete` and a StatefulSet keeps its partition above them
//! (see [`crate::workload::release_patch`]); a Deployment's template changes only after every
//! one of its nodes pulled. Its limit: the hold is a plain field on the workload, so a person
//! (or a GitOps tool) who sets the strategy back by hand gives it up.
//!
//! This module says it on the job: `status.behind` (the `Behind` column of `kubectl get rj`)
//! and the `NodesBehind` condition, whose message names the way to finish. Pure.

use edgefleet_api::rollout::{RolloutJobStatus, RolloutPhase, WorkloadKind};
use edgefleet_kit::{ConditionStatus, set_condition};
use jiff::Timestamp;

/// The condition type.
pub const CONDITION: &str = "NodesBehind";
/// Nodes named in the message at most.
const NAMED: usize = 5;

/// One workload's pods behind its template, by node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behind {
    /// `<Kind>/<name>`.
    pub workload: String,
    pub nodes: Vec<String>,
}

/// What holds a workload of `kind` while targets are behind.
fn hold(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::DaemonSet => "the DaemonSet stays OnDelete",
        WorkloadKind::StatefulSet => "the StatefulSet keeps its partition above them",
        WorkloadKind::Deployment => "the Deployment's template was not changed",
    }
}

/// Sets `status.behind` and the `NodesBehind` condition.
pub fn report(
    status: &mut RolloutJobStatus,
    kind: WorkloadKind,
    image: &str,
    behind: &[Behind],
    generation: Option<i64>,
    now: Timestamp,
) {
    let count: usize = behind.iter().map(|b| b.nodes.len()).sum();
    status.behind = i64::try_from(count).unwrap_or(i64::MAX);
    let (state, reason, message) = condition(status.phase, kind, image, behind, count);
    let ended = matches!(
        status.phase,
        RolloutPhase::Completed
            | RolloutPhase::Aborted
            | RolloutPhase::RolledBack
            | RolloutPhase::Failed
    );
    if ended && count > 0 {
        let head = status.message.take().unwrap_or_default();
        status.message = Some(format!(
            "{head}; {count} behind, held ({}): see condition {CONDITION} to finish",
            hold(kind)
        ));
    }
    set_condition(
        &mut status.conditions,
        CONDITION,
        state,
        reason,
        &message,
        generation,
        now,
    );
}

fn condition(
    phase: RolloutPhase,
    kind: WorkloadKind,
    image: &str,
    behind: &[Behind],
    count: usize,
) -> (ConditionStatus, &'static str, String) {
    if count == 0 {
        return (
            ConditionStatus::False,
            "NoneBehind",
            "every target is on its workload's template image".into(),
        );
    }
    let named: Vec<String> = behind
        .iter()
        .filter(|b| !b.nodes.is_empty())
        .map(|b| {
            let mut nodes = b.nodes.iter().take(NAMED).cloned().collect::<Vec<_>>();
            if b.nodes.len() > NAMED {
                nodes.push(format!("+{} more", b.nodes.len() - NAMED));
            }
            format!("{} on {}", b.workload, nodes.join(", "))
        })
        .collect();
    let which = format!(
        "{count} targets not on their template image ({})",
        named.join("; ")
    );
    match phase {
        RolloutPhase::Pending | RolloutPhase::Progressing | RolloutPhase::RollingBack => (
            ConditionStatus::True,
            "RollingOut",
            format!("{which}: the job pre-pulls and swaps them batch by batch"),
        ),
        RolloutPhase::Paused => (
            ConditionStatus::True,
            "Held",
            format!(
                "{which}: held while the job is paused ({}); nothing swaps them without a pre-pull",
                hold(kind)
            ),
        ),
        _ => (
            ConditionStatus::True,
            "Held",
            format!(
                "{which}: held, {} so nothing swaps them without a pre-pull. To finish once their nodes are Ready and can pull: apply a new RolloutJob with spec.image {image} for the same target — it pre-pulls and swaps only these, then gives the workload its strategy back",
                hold(kind)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind(nodes: &[&str]) -> Vec<Behind> {
        vec![Behind {
            workload: "DaemonSet/toll".into(),
            nodes: nodes.iter().map(|n| (*n).to_string()).collect(),
        }]
    }

    #[test]
    fn the_condition_says_how_many_and_how_to_finish() {
        let now = Timestamp::UNIX_EPOCH;
        let cases = [
            (
                RolloutPhase::Completed,
                &["edge-1", "edge-2"][..],
                "True",
                "Held",
            ),
            (RolloutPhase::Aborted, &["edge-1"][..], "True", "Held"),
            (RolloutPhase::RolledBack, &["edge-1"][..], "True", "Held"),
            (RolloutPhase::Paused, &["edge-1"][..], "True", "Held"),
            (
                RolloutPhase::Progressing,
                &["edge-1"][..],
                "True",
                "RollingOut",
            ),
            (RolloutPhase::Completed, &[][..], "False", "NoneBehind"),
        ];
        for (phase, nodes, state, reason) in cases {
            let mut s = RolloutJobStatus {
                phase,
                ..RolloutJobStatus::default()
            };
            report(
                &mut s,
                WorkloadKind::DaemonSet,
                "app:2",
                &behind(nodes),
                Some(1),
                now,
            );
            assert_eq!(s.behind, i64::try_from(nodes.len()).unwrap(), "{phase:?}");
            let c = s.conditions.iter().find(|c| c.type_ == CONDITION).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (state, reason),
                "{phase:?}"
            );
            if phase == RolloutPhase::Completed && !nodes.is_empty() {
                for needle in [
                    "2 targets",
                    "edge-1, edge-2",
                    "OnDelete",
                    "spec.image app:2",
                ] {
                    assert!(c.message.contains(needle), "{needle}: {}", c.message);
                }
                let message = s.message.as_deref().unwrap_or_default();
                assert!(message.contains("2 behind, held"), "{message}");
            }
        }
    }

    #[test]
    fn a_long_list_names_a_few_nodes() {
        let nodes: Vec<String> = (0..9).map(|i| format!("edge-{i}")).collect();
        let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let mut s = RolloutJobStatus::default();
        report(
            &mut s,
            WorkloadKind::StatefulSet,
            "db:2",
            &behind(&refs),
            None,
            Timestamp::UNIX_EPOCH,
        );
        let c = s.conditions.iter().find(|c| c.type_ == CONDITION).unwrap();
        assert!(c.message.contains("edge-4, +4 more"), "{}", c.message);
        assert!(!c.message.contains("edge-5"), "{}", c.message);
    }
}
