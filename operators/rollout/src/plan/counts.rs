//! The figures of a job and of its batches: one rule per target for both, so two views of the
//! same targets never disagree and a figure only grows while a target moves forward.

use std::collections::BTreeSet;

use super::{Target, TargetState};
use crate::prepull::PullState;
use edgefleet_api::rollout::{RolloutJobSpec, TargetCounts};

/// What one target adds to the figures: the one rule for the job's figures and for every
/// batch's, so that two views of the same targets never disagree. Each figure only grows while
/// a target moves forward (chosen → pulled → swapping → done): a target pulled by this job
/// stays pre-pulled through its swap, while its old pod is terminating or gone.
pub fn target_counts(spec: &RolloutJobSpec, t: &Target, state: &TargetState) -> TargetCounts {
    let on_image = t.current.as_ref().is_some_and(|p| p.image == t.image);
    let ready = on_image && t.current.as_ref().is_some_and(|p| p.ready_since.is_some());
    // Past the pull: this job's pre-pull pod pulled (or its swap started), or — the pre-pull
    // pod gone after the finish — the batch mark the finished target keeps.
    let pulled = spec.pre_pull.enabled
        && match state {
            TargetState::Pulled => true,
            TargetState::Swapping | TargetState::Done => t.prepull.as_ref().map_or(
                t.current.as_ref().is_some_and(|p| p.batch.is_some()),
                |pp| pp.swapped_at.is_some() || pp.state == PullState::Pulled,
            ),
            _ => false,
        };
    TargetCounts {
        targets: 0,
        pre_pulled: i64::from(pulled),
        updated: i64::from(on_image),
        ready: i64::from(ready),
        failed: i64::from(*state == TargetState::Failed),
        skipped: i64::from(*state == TargetState::Skipped),
    }
}

pub(super) fn add_counts(sum: &mut TargetCounts, one: &TargetCounts) {
    sum.targets += one.targets;
    sum.pre_pulled += one.pre_pulled;
    sum.updated += one.updated;
    sum.ready += one.ready;
    sum.failed += one.failed;
    sum.skipped += one.skipped;
}

/// The `groupBy` values of a batch's members, sorted, at most a few named (`None` when the
/// members have none: not grouping).
pub(super) fn batch_group<'a>(members: impl Iterator<Item = &'a Target>) -> Option<String> {
    const SHOWN: usize = 3;
    let groups: BTreeSet<&str> = members
        .map(|t| t.group.as_str())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.is_empty() {
        return None;
    }
    let mut text: Vec<&str> = groups.iter().copied().take(SHOWN).collect();
    let more = groups.len().saturating_sub(SHOWN);
    let more = format!("+{more}");
    if groups.len() > SHOWN {
        text.push(&more);
    }
    Some(text.join(","))
}
