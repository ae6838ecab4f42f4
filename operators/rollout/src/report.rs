//! What the job tells the world besides its status: Kubernetes events for milestones and
//! failures, and the per-job target gauges.

use edgefleet_api::rollout::{RolloutJob, RolloutJobStatus, RolloutPhase};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::HashMap;

use crate::controller::Context;
use crate::metrics::unix_now;
use crate::plan::{self, Snapshot, TargetState};
use crate::status::is_terminal;

pub async fn publish(ctx: &Context, job: &RolloutJob, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Rollout".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

pub async fn events(
    ctx: &Context,
    job: &RolloutJob,
    old: &RolloutJobStatus,
    new: &RolloutJobStatus,
    plan: &plan::Plan,
) {
    if let Some(n) = plan.started_batch {
        if n > 1 {
            publish(
                ctx,
                job,
                EventType::Normal,
                "BatchCompleted",
                &format!("batch {} of {} completed", n - 1, new.total_batches),
            )
            .await;
        }
        publish(
            ctx,
            job,
            EventType::Normal,
            "BatchStarted",
            &format!(
                "batch {n} of {} started with {} targets",
                new.total_batches, plan.current_batch_size
            ),
        )
        .await;
    }
    for (t, o) in plan.failures.iter().take(10) {
        publish(
            ctx,
            job,
            EventType::Warning,
            &o.reason,
            &format!("{} on node {}: {}", t.workload, t.node, o.message),
        )
        .await;
    }
    if old.phase != new.phase {
        let (type_, reason) = match new.phase {
            RolloutPhase::Paused => (EventType::Normal, "Paused"),
            RolloutPhase::RollingBack => (EventType::Warning, "RollbackStarted"),
            RolloutPhase::Completed => (EventType::Normal, "Completed"),
            RolloutPhase::RolledBack => (EventType::Normal, "RolledBack"),
            RolloutPhase::Aborted => (EventType::Warning, "Aborted"),
            RolloutPhase::Progressing => (EventType::Normal, "Progressing"),
            _ => return,
        };
        publish(
            ctx,
            job,
            type_,
            reason,
            new.message.as_deref().unwrap_or_default(),
        )
        .await;
    }
}

/// Every value of `edgefleet_rollout_targets{state}`.
pub const TARGET_STATES: [&str; 9] = [
    "done",
    "failed",
    "skipped",
    "pending",
    "waiting_for_node",
    "chosen",
    "pulling",
    "pulled",
    "swapping",
];

/// Every value of `edgefleet_rollout_phase{phase}`.
pub const PHASES: [RolloutPhase; 8] = [
    RolloutPhase::Pending,
    RolloutPhase::Progressing,
    RolloutPhase::Paused,
    RolloutPhase::RollingBack,
    RolloutPhase::Completed,
    RolloutPhase::Aborted,
    RolloutPhase::RolledBack,
    RolloutPhase::Failed,
];

fn phase_label(phase: RolloutPhase) -> String {
    format!("{phase:?}")
}

/// Whether the job moved since the progress clock was last set (pure): the clock was never set
/// (`0`), more targets reached an end state, or the phase changed.
pub fn progressed(clock: f64, ended_before: i64, ended_after: i64, phase_changed: bool) -> bool {
    clock == 0.0 || ended_after != ended_before || phase_changed
}

/// `edgefleet_rollout_phase{namespace, job, phase}`: 1 for `phase`, 0 for the others.
pub fn export_phase(ctx: &Context, ns: &str, name: &str, phase: RolloutPhase) {
    for p in PHASES {
        ctx.rollout
            .phase
            .with_label_values(&[ns, name, &phase_label(p)])
            .set(i64::from(p == phase));
    }
}

/// Drops a deleted job's series.
pub fn forget(ctx: &Context, ns: &str, name: &str) {
    let phases: Vec<String> = PHASES.into_iter().map(phase_label).collect();
    let phases: Vec<&str> = phases.iter().map(String::as_str).collect();
    ctx.rollout.forget_job(ns, name, &TARGET_STATES, &phases);
}

pub fn export_metrics(
    ctx: &Context,
    job: &RolloutJob,
    snap: &Snapshot<'_>,
    old: &RolloutJobStatus,
    new: &RolloutJobStatus,
    budget_breached: bool,
) {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let mut by_state: HashMap<&'static str, i64> = HashMap::new();
    for t in &snap.targets {
        let state = match plan::state_of(snap, t) {
            TargetState::Done => "done",
            TargetState::Failed => "failed",
            TargetState::Skipped => "skipped",
            TargetState::Pending => "pending",
            TargetState::WaitingForNode => "waiting_for_node",
            TargetState::Chosen => "chosen",
            TargetState::Pulling => "pulling",
            TargetState::Pulled => "pulled",
            TargetState::Swapping => "swapping",
        };
        *by_state.entry(state).or_default() += 1;
    }
    // Progress: more targets in an end state than the gauges said last time, or a new phase.
    let ended = |count: &dyn Fn(&str) -> i64| ["done", "failed", "skipped"].map(count).iter().sum();
    let before: i64 = ended(&|s| {
        ctx.rollout
            .targets
            .with_label_values(&[&ns, &name, s])
            .get()
    });
    let after: i64 = if is_terminal(new.phase) {
        before
    } else {
        ended(&|s| by_state.get(s).copied().unwrap_or(0))
    };
    let progress = ctx.rollout.last_progress.with_label_values(&[&ns, &name]);
    // Catching up is waiting for offline nodes by design (bounded by spec.catchUp), not a stall.
    let catching_up = new
        .conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.reason == "CatchingUp");
    if catching_up || progressed(progress.get(), before, after, old.phase != new.phase) {
        progress.set(unix_now());
    }
    let breaches = ctx.rollout.budget_breaches.with_label_values(&[&ns, &name]);
    if budget_breached && old.phase != new.phase {
        breaches.inc();
    }
    export_phase(ctx, &ns, &name, new.phase);
    for state in TARGET_STATES {
        let value = if is_terminal(new.phase) {
            0
        } else {
            by_state.get(state).copied().unwrap_or(0)
        };
        ctx.rollout
            .targets
            .with_label_values(&[&ns, &name, state])
            .set(value);
    }
    // A batch that finished in this reconcile.
    for b in &new.batches {
        let was_open = old
            .batches
            .iter()
            .find(|o| o.index == b.index)
            .is_none_or(|o| o.finish_time.is_none());
        if let (Some(start), Some(end), true) = (&b.start_time, &b.finish_time, was_open) {
            ctx.rollout
                .batch_duration
                .observe(end.0.duration_since(start.0).as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_an_end_state_reached_or_a_phase_change() {
        for (clock, before, after, phase_changed, want) in [
            (0.0, 0, 0, false, true),  // never set: the clock starts
            (5.0, 3, 3, false, false), // nothing ended since: stalled clock keeps running
            (5.0, 3, 4, false, true),  // one more target done / failed / skipped
            (5.0, 4, 0, false, true),  // a rollback starts counting anew
            (5.0, 3, 3, true, true),   // resumed after a pause
        ] {
            assert_eq!(
                progressed(clock, before, after, phase_changed),
                want,
                "{clock} {before} {after} {phase_changed}"
            );
        }
    }

    #[test]
    fn every_phase_has_a_label() {
        let labels: Vec<String> = PHASES.into_iter().map(phase_label).collect();
        assert_eq!(labels[1], "Progressing");
        let unique: std::collections::BTreeSet<&String> = labels.iter().collect();
        assert_eq!(unique.len(), PHASES.len());
    }
}
