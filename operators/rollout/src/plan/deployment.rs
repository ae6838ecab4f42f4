//! The next step of a Deployment target: a pull on each of its nodes, then one image patch.

use edgefleet_api::rollout::OfflineNodeAction;
use jiff::SignedDuration;

use crate::prepull::PullState;

use super::NODE_OFFLINE;
use super::model::*;
use super::rules::{offline_wait_expired, pull_failure, verified};
use super::slot::{Limits, fail, skip};
use super::state::member_batch;

/// Where a Deployment target stands (its outcome already checked).
pub(super) fn deployment_state(snap: &Snapshot<'_>, t: &Target, pulls: &[NodePull]) -> TargetState {
    let spec = snap.spec;
    let Some(d) = &t.current else {
        return TargetState::Done;
    };
    if d.image == t.image {
        return if verified(spec, d.ready_since, snap.now) {
            TargetState::Done
        } else {
            TargetState::Swapping
        };
    }
    if member_batch(&snap.direction, t).is_none() {
        return TargetState::Pending;
    }
    if !t.node_ready && spec.offline_nodes.action == OfflineNodeAction::Wait {
        return TargetState::WaitingForNode;
    }
    let pulled = |p: &NodePull| {
        p.prepull
            .as_ref()
            .is_some_and(|pp| pp.state == PullState::Pulled)
    };
    if !spec.pre_pull.enabled || pulls.iter().all(pulled) {
        TargetState::Pulled
    } else if pulls.iter().all(|p| p.prepull.is_none()) {
        TargetState::Chosen
    } else {
        TargetState::Pulling
    }
}

/// Decides the next step of a Deployment target that is (or was) part of a batch: a pull on
/// each of its nodes, then one image patch once every node pulled; a node that cannot pull
/// fails the whole Deployment, which is then never patched.
#[allow(clippy::too_many_arguments)]
pub(super) fn step_deployment(
    snap: &Snapshot<'_>,
    t: &Target,
    deployment: &str,
    pulls: &[NodePull],
    state: &TargetState,
    active: bool,
    limits: &mut Limits<'_>,
    out: &mut Plan,
) {
    let spec = snap.spec;
    let dir = &snap.direction;
    let now = snap.now;
    let batch = member_batch(dir, t)
        .map(|n| dir.batch_key(n))
        .unwrap_or_default();
    let drop_pulls = |out: &mut Plan| {
        for pp in pulls.iter().filter_map(|p| p.prepull.as_ref()) {
            out.actions.push(Action::DeletePrePull {
                name: pp.name.clone(),
            });
        }
    };
    match state {
        TargetState::Done | TargetState::Failed | TargetState::Skipped => drop_pulls(out),
        TargetState::Pending => {}
        TargetState::WaitingForNode => {
            let chosen_at = t.current.as_ref().and_then(|p| p.chosen_at);
            if let Some(limit) = offline_wait_expired(spec, chosen_at, now) {
                let message = format!(
                    "a node of {} stayed NotReady for offlineNodes.waitSeconds ({}s)",
                    t.workload,
                    limit.as_secs()
                );
                fail(t, NODE_OFFLINE, &message, out);
            }
        }
        TargetState::Chosen | TargetState::Pulling => {
            if snap.stop {
                return;
            }
            if *state == TargetState::Chosen && !t.node_ready {
                let offline: Vec<&str> = pulls
                    .iter()
                    .filter(|p| !p.node_ready)
                    .map(|p| p.node.as_str())
                    .collect();
                let message = format!("node(s) {} NotReady: skipped", offline.join(", "));
                skip(t, NODE_OFFLINE, &message, out);
                return;
            }
            for p in pulls {
                let new_pull = |attempt| Action::PrePull {
                    node: p.node.clone(),
                    slot: Some(Slot::pull_key(deployment, &p.node)),
                    image: t.image.clone(),
                    batch: batch.clone(),
                    attempt,
                    swap: false,
                };
                let Some(pp) = &p.prepull else {
                    if active && *limits.pulling < limits.pull_limit {
                        *limits.pulling += 1;
                        out.actions.push(new_pull(1));
                    }
                    continue;
                };
                let Some((reason, message)) = pull_failure(spec, pp, now) else {
                    continue;
                };
                if pp.attempt <= spec.pre_pull.retries {
                    out.actions.push(Action::DeletePrePull {
                        name: pp.name.clone(),
                    });
                    if active {
                        out.actions.push(new_pull(pp.attempt + 1));
                    }
                } else {
                    let message = format!("node {}: {reason}: {message}", p.node);
                    fail(t, "PullFailed", &message, out);
                    drop_pulls(out);
                    return;
                }
            }
        }
        TargetState::Pulled => {
            if active && *limits.swapping < limits.swap_limit {
                *limits.swapping += 1;
                out.actions.push(Action::SetImage {
                    deployment: deployment.to_string(),
                    image: t.image.clone(),
                });
            }
        }
        TargetState::Swapping => {
            // The clock runs from the swap (recorded with it), else from when it was seen.
            let since = t.current.as_ref().map(|d| d.created);
            let limit = SignedDuration::from_secs(spec.verify.ready_timeout_seconds);
            if since.is_some_and(|at| at + limit <= now) {
                let message = format!(
                    "rollout of {} not complete (every replica updated and Ready) within {}s of the swap",
                    t.workload, spec.verify.ready_timeout_seconds
                );
                fail(t, "NotReady", &message, out);
            }
        }
    }
}
