//! The pure heart of the rollout: from a snapshot of the cluster (targets, their pods and
//! pre-pull pods) decide what to do next and what the status says. No I/O here, so every rule
//! has a table test.
//!
//! Per target (a workload's pod slot on one node) the life is:
//!
//! ```text
//! Pending ─▶ chosen for batch k ─▶ pre-pull pod ─▶ pulled ─▶ swap (old pod deleted)
//!                  │                    │ failed: retry, then Failed        │
//!                  │ node offline: Skip / Wait                              ▼
//!                  ▼                                          new pod Ready for minReadySeconds
//!               Skipped                                                      │
//!                                                                  Done (pre-pull pod removed)
//! ```
//!
//! Every step leaves a mark on the cluster (an annotation on the target pod, a pre-pull pod with
//! its labels and annotations), so a restarted operator rebuilds exactly this picture.
//!
//! | concept | module |
//! |---|---|
//! | targets, snapshot, actions, the plan | `model` |
//! | rollout order, batch sizes, tolerance | `batches` |
//! | where a target stands, ordinal gates | `state` |
//! | when verified, a pull failed, an offline wait ended | `rules` |
//! | the next step of a DaemonSet / StatefulSet target | `slot` |
//! | the next step of a Deployment target | `deployment` |

mod batches;
mod counts;
mod deployment;
mod model;
mod rules;
mod slot;
mod state;

pub use batches::*;
pub use model::*;
pub use rules::next_deadline;
pub use state::*;

use edgefleet_api::rollout::TargetCounts;

use crate::prepull::PullState;

use counts::{add_counts, batch_group, target_counts};
use deployment::step_deployment;
use slot::{Limits, step_target};

/// Makes the plan for one reconcile.
pub fn plan(snap: &Snapshot<'_>) -> Plan {
    let spec = snap.spec;
    let dir = &snap.direction;
    let total = i64::try_from(snap.targets.len()).unwrap_or(i64::MAX);
    let mut out = Plan {
        current_batch: snap.current_batch,
        ..Plan::default()
    };

    let states: Vec<TargetState> = snap.targets.iter().map(|t| state_of(snap, t)).collect();

    // Figures first: they decide the failure budget. One rule per target for the job's
    // figures and every batch's (see `target_counts`).
    let mut counts = TargetCounts {
        targets: total,
        ..TargetCounts::default()
    };
    for (t, s) in snap.targets.iter().zip(&states) {
        add_counts(&mut counts, &target_counts(spec, t, s));
    }
    out.budget_exceeded = counts.failed > tolerance(&spec.failure_policy.tolerance, total);
    out.counts = counts;

    let active = !snap.stop && !snap.hold && !out.budget_exceeded;
    let in_current = |t: &Target| member_batch(dir, t) == Some(snap.current_batch);

    // Work on the members of the current batch, and on stragglers of earlier batches
    // (offline nodes waited for, swaps still in flight).
    let pull_limit = usize::try_from(spec.pre_pull.parallelism)
        .unwrap_or(1)
        .max(1);
    let mut pulling: usize = snap
        .targets
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s == TargetState::Pulling)
        .map(|(t, _)| match &t.slot {
            Slot::Workload { pulls, .. } => pulls
                .iter()
                .filter(|p| {
                    p.prepull
                        .as_ref()
                        .is_some_and(|pp| pp.state == PullState::Pulling)
                })
                .count(),
            _ => 1,
        })
        .sum();
    let mut swapping = states
        .iter()
        .filter(|s| **s == TargetState::Swapping)
        .count();
    let batch_members = snap.targets.iter().filter(|t| in_current(t)).count();
    let swap_limit = spec
        .batches
        .max_unavailable
        .as_ref()
        .map_or(usize::MAX, |m| {
            usize::try_from(scaled(m, i64::try_from(batch_members).unwrap_or(0))).unwrap_or(1)
        })
        .max(1);

    let gates = ordinal_gates(&snap.targets, &states);
    for ((t, s), gate) in snap.targets.iter().zip(&states).zip(&gates) {
        let ours = member_batch(dir, t).is_some() || t.prepull.is_some();
        if !ours && *s != TargetState::Swapping {
            continue;
        }
        let mut limits = Limits {
            pulling: &mut pulling,
            pull_limit,
            swapping: &mut swapping,
            swap_limit,
        };
        match &t.slot {
            Slot::Workload { deployment, pulls } => {
                step_deployment(snap, t, deployment, pulls, s, active, &mut limits, &mut out);
            }
            _ => step_target(snap, t, s, gate, active, &mut limits, &mut out),
        }
    }

    // Batch bookkeeping.
    let members: Vec<usize> = (0..snap.targets.len())
        .filter(|&i| in_current(&snap.targets[i]))
        .collect();
    let unfinished = members
        .iter()
        .any(|&i| !states[i].is_terminal() && states[i] != TargetState::WaitingForNode);
    let pending: Vec<usize> = (0..snap.targets.len())
        .filter(|&i| states[i] == TargetState::Pending)
        .collect();
    let missing = snap.current_batch_size - i64::try_from(members.len()).unwrap_or(i64::MAX);

    out.current_batch_size = i64::try_from(members.len()).unwrap_or(0);
    for &i in &members {
        let c = &mut out.current_batch_counts;
        c.targets += 1;
        add_counts(c, &target_counts(spec, &snap.targets[i], &states[i]));
    }
    out.current_batch_group = batch_group(members.iter().map(|&i| &snap.targets[i]));
    if snap.current_batch > 0 && missing > 0 && !pending.is_empty() && !snap.stop {
        // Restarted while choosing the members of the current batch: finish choosing, in the
        // same order, so the batch is what it was meant to be.
        let take = usize::try_from(missing).unwrap_or(0).min(pending.len());
        for &i in &pending[..take] {
            choose(dir, &snap.targets[i], snap.current_batch, &mut out);
        }
        out.current_batch_size += i64::try_from(take).unwrap_or(0);
    } else if !unfinished {
        out.current_batch_done = snap.current_batch > 0;
        // A step pause after this batch starts from its finish time, which the status records
        // with this plan: the next batch waits for a later reconcile to judge the pause.
        let pause_follows = usize::try_from(snap.current_batch - 1)
            .ok()
            .and_then(|i| spec.batches.steps.as_ref()?.get(i))
            .is_some_and(|step| step.pause.is_some());
        if active && !pending.is_empty() && !(pause_follows && snap.step_pause_pending) {
            let next = snap.current_batch + 1;
            let groups: Vec<&str> = pending
                .iter()
                .map(|&i| snap.targets[i].group.as_str())
                .collect();
            let take = take_batch(
                &spec.batches,
                &groups,
                batch_size(&spec.batches, next, total),
            );
            for &i in &pending[..take] {
                choose(dir, &snap.targets[i], next, &mut out);
            }
            out.current_batch = next;
            out.current_batch_size = i64::try_from(take).unwrap_or(0);
            out.started_batch = Some(next);
            out.current_batch_group =
                batch_group(pending[..take].iter().map(|&i| &snap.targets[i]));
        }
    }

    let remaining: Vec<&str> = pending
        .iter()
        .map(|&i| snap.targets[i].group.as_str())
        .collect();
    // The pending targets as they were before this plan chose any: a batch just started is
    // their head.
    let first = snap.current_batch + 1;
    let after = count_batches(&spec.batches, &remaining, total, first);
    out.total_batches = snap.current_batch + after;
    catch_up(snap, &states, active, &mut out);
    out.all_terminal = states.iter().all(TargetState::is_terminal);
    out.complete = out.all_terminal && out.catching_up == 0;
    out
}

/// The outcome reason of a target whose node was offline (skipped, or waited for too long).
pub const NODE_OFFLINE: &str = "NodeOffline";

/// Catching up nodes that come back. While the window is open, a DaemonSet target skipped (or
/// failed) because its node was offline is reopened once the node is Ready: chosen again in
/// its batch, it is pre-pulled before its swap, as every target.
/// Those still offline are waited for (`catching_up`). StatefulSet ordinals are not reopened:
/// the ones below an offline ordinal were skipped as `Blocked` and a partition cannot go back;
/// they stay behind it for a new job. After the window, the offline ones stay behind (held).
fn catch_up(snap: &Snapshot<'_>, states: &[TargetState], active: bool, out: &mut Plan) {
    if !snap.catch_up_open || snap.stop {
        return;
    }
    for (t, s) in snap.targets.iter().zip(states) {
        let Some(pod) = &t.current else { continue };
        let offline = matches!(s, TargetState::Skipped | TargetState::Failed)
            && matches!(t.slot, Slot::Node)
            && pod
                .outcome
                .as_ref()
                .is_some_and(|o| o.reason == NODE_OFFLINE);
        if !offline {
            continue;
        }
        out.catching_up += 1;
        if t.node_ready && active {
            out.actions.push(Action::Reopen {
                pod: pod.name.clone(),
            });
        }
    }
}

fn choose(dir: &Direction, t: &Target, batch: i32, out: &mut Plan) {
    if let Some(pod) = &t.current {
        out.actions.push(Action::Choose {
            pod: pod.name.clone(),
            batch: dir.batch_key(batch),
        });
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_counting;
#[cfg(test)]
mod tests_workloads;
