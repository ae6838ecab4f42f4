//! The next step of one DaemonSet or StatefulSet target: pull, swap, verify, or record why not.

use jiff::SignedDuration;

use super::NODE_OFFLINE;
use super::model::*;
use super::rules::{offline_wait_expired, pull_failure};
use super::state::{Gate, member_batch};

/// Pull and swap slots left in this plan.
pub(super) struct Limits<'a> {
    pub(super) pulling: &'a mut usize,
    pub(super) pull_limit: usize,
    pub(super) swapping: &'a mut usize,
    pub(super) swap_limit: usize,
}

/// The pre-pull slot key of a DaemonSet or StatefulSet target.
pub(super) fn slot_key(t: &Target) -> Option<String> {
    match &t.slot {
        Slot::Ordinal {
            statefulset,
            ordinal,
            ..
        } => Some(Slot::ordinal_key(statefulset, *ordinal)),
        _ => None,
    }
}

/// Decides the next step of one DaemonSet or StatefulSet target that is (or was) part of a
/// batch.
pub(super) fn step_target(
    snap: &Snapshot<'_>,
    t: &Target,
    state: &TargetState,
    gate: &Gate,
    active: bool,
    limits: &mut Limits<'_>,
    out: &mut Plan,
) {
    let (pull_limit, swap_limit) = (limits.pull_limit, limits.swap_limit);
    let pulling = &mut *limits.pulling;
    let swapping = &mut *limits.swapping;
    let spec = snap.spec;
    let dir = &snap.direction;
    let now = snap.now;
    let batch = member_batch(dir, t)
        .map(|n| dir.batch_key(n))
        .unwrap_or_default();
    match state {
        TargetState::Done => {
            // Verified: keep the membership on the new pod, drop the pre-pull pod.
            if let (Some(pod), Some(pp)) = (&t.current, &t.prepull)
                && pp.outcome.is_none()
            {
                // Measured once: a Finish repeated before the cache shows it done (the pod
                // already marked) must not observe the interruption again.
                let interruption = match (pp.swapped_at, pod.ready_since, &pod.batch) {
                    (Some(gone), Some(ready), None) => Some(ready.duration_since(gone)),
                    _ => None,
                };
                out.actions.push(Action::Finish {
                    pod: pod.name.clone(),
                    batch,
                    prepull: pp.name.clone(),
                    interruption,
                });
            }
        }
        TargetState::Failed | TargetState::Skipped => {
            // The outcome is recorded on the target pod: the pre-pull pod has no more use.
            if let Some(pp) = &t.prepull
                && pp.outcome.is_none()
            {
                out.actions.push(Action::DeletePrePull {
                    name: pp.name.clone(),
                });
            }
        }
        TargetState::Pending => {}
        TargetState::WaitingForNode => {
            let chosen_at = t.current.as_ref().and_then(|p| p.chosen_at);
            if let Some(limit) = offline_wait_expired(spec, chosen_at, now) {
                let message = format!(
                    "node {} stayed NotReady for offlineNodes.waitSeconds ({}s)",
                    t.node,
                    limit.as_secs()
                );
                fail(t, NODE_OFFLINE, &message, out);
            }
        }
        TargetState::Chosen => {
            if snap.stop {
                return;
            }
            if let Gate::Blocked(message) = gate {
                skip(t, "Blocked", message, out);
                return;
            }
            if !t.node_ready {
                // offlineNodes: Skip (Wait is its own state). Listed in status like a failure.
                let outcome = Outcome {
                    kind: OutcomeKind::Skipped,
                    reason: NODE_OFFLINE.into(),
                    message: format!("node {} is NotReady: skipped", t.node),
                };
                if let Some(pod) = &t.current {
                    out.actions.push(Action::Record {
                        pod: pod.name.clone(),
                        outcome: outcome.clone(),
                    });
                }
                out.failures.push((t.clone(), outcome));
                return;
            }
            if !active {
                return;
            }
            if !spec.pre_pull.enabled {
                // No pull, but the swap still needs a record that outlives the old pod: a
                // pre-pull pod of the image the node already has, marked as swapping.
                if let Some(pod) = &t.current
                    && *swapping < swap_limit
                    && *gate == Gate::Open
                {
                    *swapping += 1;
                    out.actions.push(Action::PrePull {
                        node: t.node.clone(),
                        slot: slot_key(t),
                        image: pod.image.clone(),
                        batch,
                        attempt: 1,
                        swap: true,
                    });
                }
            } else if *pulling < pull_limit {
                *pulling += 1;
                out.actions.push(Action::PrePull {
                    node: t.node.clone(),
                    slot: slot_key(t),
                    image: t.image.clone(),
                    batch,
                    attempt: 1,
                    swap: false,
                });
            }
        }
        TargetState::Pulling => {
            let Some(pp) = &t.prepull else { return };
            if let Gate::Blocked(message) = gate
                && !snap.stop
            {
                skip(t, "Blocked", message, out);
                return;
            }
            if went_offline(snap, t, out) {
                return;
            }
            let Some((reason, message)) = pull_failure(spec, pp, now) else {
                return;
            };
            if pp.attempt <= spec.pre_pull.retries && !snap.stop {
                // A retry is a fresh pod: the kubelet's own back-off would hold the node's
                // slot for minutes.
                out.actions.push(Action::DeletePrePull {
                    name: pp.name.clone(),
                });
                if active {
                    out.actions.push(Action::PrePull {
                        node: t.node.clone(),
                        slot: slot_key(t),
                        image: t.image.clone(),
                        batch,
                        attempt: pp.attempt + 1,
                        swap: false,
                    });
                }
            } else {
                fail(t, "PullFailed", &format!("{reason}: {message}"), out);
            }
        }
        TargetState::Pulled => {
            if went_offline(snap, t, out) {
                return;
            }
            if let Gate::Blocked(message) = gate
                && !snap.stop
            {
                skip(t, "Blocked", message, out);
            } else if active && *gate == Gate::Open {
                try_swap(t, t.prepull.as_ref(), swapping, swap_limit, out);
            }
        }
        TargetState::Swapping => {
            let pp = t.prepull.as_ref();
            // The old pod may still be there if a delete was lost (or the partition was not
            // lowered): ask again (idempotent).
            if let (Some(pp), Some(pod)) = (pp, &t.current)
                && pp.swapped_at.is_some()
                && pod.image != t.image
                && !pod.terminating
            {
                match &t.slot {
                    Slot::Ordinal {
                        statefulset,
                        ordinal,
                        partition: Some(partition),
                    } if partition > ordinal => {
                        out.actions.push(Action::LowerPartition {
                            statefulset: statefulset.clone(),
                            from: *partition,
                            to: *ordinal,
                            prepull: None,
                        });
                        return;
                    }
                    Slot::Ordinal { .. } => {}
                    _ => {
                        out.actions.push(Action::Swap {
                            node: t.node.clone(),
                            pod: pod.name.clone(),
                            pod_uid: pod.uid.clone(),
                            prepull: None,
                        });
                        return;
                    }
                }
            }
            // Verification clock: from our swap, else from the new pod's creation (a pod that
            // reached the image without us, e.g. recreated after an eviction).
            let since = pp.and_then(|p| p.swapped_at).or(t
                .current
                .as_ref()
                .filter(|p| p.image == t.image)
                .map(|p| p.created));
            let limit = SignedDuration::from_secs(spec.verify.ready_timeout_seconds);
            if since.is_some_and(|at| at + limit <= now) {
                let message = format!(
                    "new pod not Ready within {}s of the swap",
                    spec.verify.ready_timeout_seconds
                );
                fail(t, "NotReady", &message, out);
            }
        }
    }
}

/// offlineNodes: Skip (Wait is its own state) for a DaemonSet target whose node went away
/// while it pulled or waited for its swap: a pull that cannot finish is not the image's
/// failure, and a swap there could not complete. Skipped, and caught up (pre-pulled again) if
/// the node returns within the catch-up window.
fn went_offline(snap: &Snapshot<'_>, t: &Target, out: &mut Plan) -> bool {
    if t.node_ready || snap.stop || !matches!(t.slot, Slot::Node) {
        return false;
    }
    let message = format!("node {} went NotReady before its swap: skipped", t.node);
    skip(t, NODE_OFFLINE, &message, out);
    true
}

fn try_swap(
    t: &Target,
    prepull: Option<&PrePullView>,
    swapping: &mut usize,
    swap_limit: usize,
    out: &mut Plan,
) {
    let Some(pod) = &t.current else { return };
    if *swapping >= swap_limit {
        return;
    }
    if let Slot::Ordinal {
        statefulset,
        ordinal,
        partition,
    } = &t.slot
    {
        // Not a partition (changed by hand, which pauses the job): nothing to lower.
        let Some(partition) = partition else { return };
        *swapping += 1;
        out.actions.push(Action::LowerPartition {
            statefulset: statefulset.clone(),
            from: *partition,
            to: *ordinal,
            prepull: prepull.map(|p| (p.name.clone(), p.created)),
        });
        return;
    }
    *swapping += 1;
    out.actions.push(Action::Swap {
        node: t.node.clone(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        prepull: prepull.map(|p| (p.name.clone(), p.created)),
    });
}

pub(super) fn fail(t: &Target, reason: &str, message: &str, out: &mut Plan) {
    let outcome = Outcome {
        kind: OutcomeKind::Failed,
        reason: reason.into(),
        message: message.into(),
    };
    match (&t.current, &t.prepull) {
        (Some(pod), prepull) => {
            out.actions.push(Action::Record {
                pod: pod.name.clone(),
                outcome: outcome.clone(),
            });
            if let Some(pp) = prepull {
                out.actions.push(Action::DeletePrePull {
                    name: pp.name.clone(),
                });
            }
        }
        // No pod left to carry the outcome: the pre-pull pod keeps it until the job ends.
        (None, Some(pp)) => out.actions.push(Action::RecordOnPrePull {
            prepull: pp.name.clone(),
            outcome: outcome.clone(),
        }),
        (None, None) => {}
    }
    out.failures.push((t.clone(), outcome));
}

pub(super) fn skip(t: &Target, reason: &str, message: &str, out: &mut Plan) {
    let outcome = Outcome {
        kind: OutcomeKind::Skipped,
        reason: reason.into(),
        message: message.into(),
    };
    if let Some(pod) = &t.current {
        out.actions.push(Action::Record {
            pod: pod.name.clone(),
            outcome: outcome.clone(),
        });
    }
    if let Some(pp) = &t.prepull {
        out.actions.push(Action::DeletePrePull {
            name: pp.name.clone(),
        });
    }
    out.failures.push((t.clone(), outcome));
}
