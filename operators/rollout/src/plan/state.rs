//! Where a target stands, read from its marks on the cluster, and the StatefulSet ordinal gates.

use edgefleet_api::rollout::OfflineNodeAction;

use crate::prepull::PullState;

use super::deployment::deployment_state;
use super::model::*;
use super::rules::verified;

/// The batch (of this direction) a target was chosen for.
pub fn member_batch(dir: &Direction, t: &Target) -> Option<i32> {
    if let Some(key) = t.current.as_ref().and_then(|p| p.batch.as_deref()) {
        return dir.batch_number(key);
    }
    t.prepull.as_ref().and_then(|p| dir.batch_number(&p.batch))
}

/// The batch in progress and the members it was started with, from the status (`status_batch`,
/// `status_size`) and the targets' marks. The restart-recovery rule: the cluster's batch marks
/// win over a lost status write — when a target is marked for a batch later than the status
/// says (the status write after choosing it was lost), that batch is in progress, with the
/// members marked for it. Otherwise the status is right.
pub fn recover_batch(
    dir: &Direction,
    targets: &[Target],
    status_batch: i32,
    status_size: i64,
) -> (i32, i64) {
    let marked = targets
        .iter()
        .filter_map(|t| member_batch(dir, t))
        .max()
        .unwrap_or(0);
    if marked <= status_batch {
        return (status_batch, status_size);
    }
    let members = targets
        .iter()
        .filter(|t| member_batch(dir, t) == Some(marked))
        .count();
    (marked, i64::try_from(members).unwrap_or(0))
}

/// Where a target stands.
pub fn state_of(snap: &Snapshot<'_>, t: &Target) -> TargetState {
    let dir = &snap.direction;
    let spec = snap.spec;
    let outcome = t
        .current
        .as_ref()
        .and_then(|p| p.outcome.as_ref())
        .or(t.prepull.as_ref().and_then(|p| p.outcome.as_ref()));
    if let Some(o) = outcome {
        return match o.kind {
            OutcomeKind::Failed => TargetState::Failed,
            OutcomeKind::Skipped => TargetState::Skipped,
        };
    }
    if let Slot::Workload { pulls, .. } = &t.slot {
        return deployment_state(snap, t, pulls);
    }
    let swapped = t.prepull.as_ref().is_some_and(|p| p.swapped_at.is_some());
    let Some(pod) = &t.current else {
        // No pod: either our swap is in flight, or the workload does not run here now.
        return if swapped {
            TargetState::Swapping
        } else {
            TargetState::Done
        };
    };
    if pod.terminating {
        return if swapped || member_batch(dir, t).is_some() {
            TargetState::Swapping
        } else {
            TargetState::Pending
        };
    }
    if pod.image == t.image {
        return if verified(spec, pod.ready_since, snap.now) {
            TargetState::Done
        } else {
            TargetState::Swapping
        };
    }
    if member_batch(dir, t).is_none() {
        return TargetState::Pending;
    }
    if swapped {
        return TargetState::Swapping;
    }
    if !t.node_ready && spec.offline_nodes.action == OfflineNodeAction::Wait {
        return TargetState::WaitingForNode;
    }
    match t.prepull.as_ref().map(|p| &p.state) {
        None => TargetState::Chosen,
        Some(PullState::Pulled) => TargetState::Pulled,
        Some(_) => TargetState::Pulling,
    }
}

/// Whether a StatefulSet ordinal may be swapped, given the ordinals above it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Every ordinal above is done (or it is not an ordinal).
    Open,
    /// An ordinal above is still on its way.
    Closed,
    /// An ordinal above was not updated: the partition can never pass it.
    Blocked(String),
}

/// The gate of every target (see [`Gate`]): one walk per StatefulSet from its highest ordinal.
pub fn ordinal_gates(targets: &[Target], states: &[TargetState]) -> Vec<Gate> {
    let mut gates = vec![Gate::Open; targets.len()];
    let mut by_set: std::collections::HashMap<&str, Vec<(i32, usize)>> =
        std::collections::HashMap::new();
    for (i, t) in targets.iter().enumerate() {
        if let Slot::Ordinal {
            statefulset,
            ordinal,
            ..
        } = &t.slot
        {
            by_set.entry(statefulset).or_default().push((*ordinal, i));
        }
    }
    for (set, mut ordinals) in by_set {
        ordinals.sort_by_key(|o| std::cmp::Reverse(o.0));
        let mut gate = Gate::Open;
        for (ordinal, i) in ordinals {
            gates[i] = gate.clone();
            if matches!(gate, Gate::Blocked(_)) {
                continue;
            }
            match states[i] {
                TargetState::Done => {}
                TargetState::Failed | TargetState::Skipped => {
                    gate = Gate::Blocked(format!(
                        "StatefulSet {set} ordinal {ordinal} above it was not updated, and a partition cannot skip an ordinal"
                    ));
                }
                _ => gate = Gate::Closed,
            }
        }
    }
    gates
}
