//! Cutting targets into batches: rollout order, sizes, the failure tolerance.

use edgefleet_api::rollout::{BatchPolicy, FailureAction, RolloutJobSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::*;

/// Sorts targets into rollout order — deterministic, so a restarted operator picks the same
/// next batch: DaemonSet slots by group, node, workload; StatefulSet ordinals by group,
/// workload, then from the highest ordinal down (the only order a partition allows);
/// Deployments by group, then name.
pub fn order_targets(targets: &mut [Target]) {
    fn key(t: &Target) -> (&str, &str, &str, i64) {
        match &t.slot {
            Slot::Node => (t.group.as_str(), t.node.as_str(), t.workload.as_str(), 0),
            Slot::Ordinal { ordinal, .. } => (
                t.group.as_str(),
                t.workload.as_str(),
                "",
                -i64::from(*ordinal),
            ),
            Slot::Workload { .. } => (t.group.as_str(), t.workload.as_str(), "", 0),
        }
    }
    targets.sort_by(|a, b| key(a).cmp(&key(b)));
}

/// `value` of `total`: a count, or a percentage rounded up (at least 1 when `total > 0`).
pub fn scaled(value: &IntOrString, total: i64) -> i64 {
    match value {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let n = (total * pct + 99) / 100;
            if pct > 0 { n.max(1) } else { 0 }
        }
    }
}

/// Failures tolerated: a count, or a percentage of all targets rounded down.
pub fn tolerance(value: &IntOrString, total: i64) -> i64 {
    match value {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            total * pct / 100
        }
    }
}

/// Size of batch `n` (1-based) for `total` targets.
pub fn batch_size(policy: &BatchPolicy, n: i32, total: i64) -> i64 {
    if let Some(steps) = &policy.steps {
        return match usize::try_from(n - 1).ok().and_then(|i| steps.get(i)) {
            Some(step) => scaled(&step.size, total).max(1),
            // Whatever the steps did not cover goes in one last batch.
            None => total.max(1),
        };
    }
    let size = policy.size.as_ref().map_or_else(
        || scaled(&IntOrString::String("10%".into()), total),
        |s| scaled(s, total),
    );
    size.max(1)
}

/// How many batches the targets still pending (given their groups, in order) make when the
/// next batch is number `first`. Sizes are taken of all `total` targets, as when the batches
/// start, and steps are counted from `first` on.
pub fn count_batches(policy: &BatchPolicy, groups: &[&str], total: i64, first: i32) -> i32 {
    let mut n = first;
    let mut i = 0;
    while i < groups.len() {
        i += take_batch(policy, &groups[i..], batch_size(policy, n, total));
        n += 1;
    }
    n - first
}

/// How many of the next targets (given their groups, in order) one batch of `size` takes: whole
/// groups when grouping (at least one group, even when larger than `size`).
pub(super) fn take_batch(policy: &BatchPolicy, groups: &[&str], size: i64) -> usize {
    let size = usize::try_from(size).unwrap_or(usize::MAX).max(1);
    if policy.group_by.is_none() {
        return size.min(groups.len());
    }
    let mut taken = 0;
    while taken < groups.len() {
        let group = groups[taken];
        let len = groups[taken..].iter().take_while(|g| **g == group).count();
        if taken > 0 && taken + len > size {
            break;
        }
        taken += len;
    }
    taken
}

/// What the failure policy makes of an exceeded budget.
pub fn budget_action(spec: &RolloutJobSpec) -> FailureAction {
    spec.failure_policy.action
}
