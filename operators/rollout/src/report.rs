//! What the job tells the world besides its status: Kubernetes events for milestones and
//! failures, and the per-job target gauges.

use edgefleet_api::rollout::{RolloutJob, RolloutJobStatus, RolloutPhase};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::HashMap;

use crate::controller::Context;
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

pub fn export_metrics(
    ctx: &Context,
    job: &RolloutJob,
    snap: &Snapshot<'_>,
    old: &RolloutJobStatus,
    new: &RolloutJobStatus,
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
    for state in [
        "done",
        "failed",
        "skipped",
        "pending",
        "waiting_for_node",
        "chosen",
        "pulling",
        "pulled",
        "swapping",
    ] {
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
