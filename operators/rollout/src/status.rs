//! Status: what `kubectl get rolloutjobs` shows — phase, batch progress, counts, bounded batch
//! summaries and recent failures, conditions. Pure functions of the plan and the old status.

use edgefleet_api::rollout::{
    BatchSummary, FailureAction, MAX_BATCH_SUMMARIES, MAX_RECENT_FAILURES, RolloutJob,
    RolloutJobSpec, RolloutJobStatus, RolloutPhase, TargetCounts, TargetFailure,
};
use edgefleet_kit::{ConditionStatus, set_condition};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::plan;

/// What the phase is decided from.
pub struct Situation<'a> {
    pub spec: &'a RolloutJobSpec,
    pub plan: &'a plan::Plan,
    pub rolling_back: bool,
    pub aborting: bool,
    /// What a person changed on a workload, if anything.
    pub hand_edit: Option<String>,
    /// A step pause that holds, with its message.
    pub step_pause: Option<String>,
}

/// The phase, and why the job is paused or what broke the budget.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub phase: RolloutPhase,
    /// `(reason, message)` of the Paused condition.
    pub pause: Option<(&'static str, String)>,
    /// Set when failures exceed the tolerance.
    pub budget_exceeded: Option<String>,
}

/// Decides the phase: abort first, then the failure budget (even when every target is done),
/// completion, then the reasons to hold (a hand edit, `spec.paused`, a step pause). A rollback that breaks the budget pauses:
/// a rollback is never rolled back.
pub fn decide(s: &Situation<'_>) -> Decision {
    let plan = s.plan;
    let mut d = Decision {
        phase: if s.rolling_back {
            RolloutPhase::RollingBack
        } else {
            RolloutPhase::Progressing
        },
        pause: None,
        budget_exceeded: None,
    };
    if s.aborting {
        d.phase = RolloutPhase::Aborted;
    } else if plan.budget_exceeded {
        let message = format!(
            "{} targets failed, more than the tolerance of {}",
            plan.counts.failed,
            plan::tolerance(&s.spec.failure_policy.tolerance, plan.counts.targets)
        );
        let action = if s.rolling_back {
            FailureAction::Pause
        } else {
            s.spec.failure_policy.action
        };
        match action {
            FailureAction::Pause => {
                d.phase = RolloutPhase::Paused;
                d.pause = Some((
                    "FailureBudgetExceeded",
                    format!(
                        "{message}: raise spec.failurePolicy.tolerance to go on, or set spec.abort or spec.rollback"
                    ),
                ));
            }
            FailureAction::Abort => d.phase = RolloutPhase::Aborted,
            FailureAction::Rollback => d.phase = RolloutPhase::RollingBack,
        }
        d.budget_exceeded = Some(message);
    } else if plan.complete {
        // Checked after the budget: a job whose last failures broke it is not Completed.
        d.phase = if s.rolling_back {
            RolloutPhase::RolledBack
        } else {
            RolloutPhase::Completed
        };
    } else if let Some(m) = &s.hand_edit {
        d.phase = RolloutPhase::Paused;
        d.pause = Some(("WorkloadChanged", m.clone()));
    } else if s.spec.paused {
        d.phase = RolloutPhase::Paused;
        d.pause = Some((
            "SpecPaused",
            "spec.paused is true: set it to false to resume".into(),
        ));
    } else if let Some(m) = &s.step_pause {
        d.phase = RolloutPhase::Paused;
        d.pause = Some(("StepPause", m.clone()));
    }
    d
}

/// Phases after which the job does nothing more.
pub fn is_terminal(phase: RolloutPhase) -> bool {
    matches!(
        phase,
        RolloutPhase::Completed
            | RolloutPhase::Aborted
            | RolloutPhase::RolledBack
            | RolloutPhase::Failed
    )
}

/// Members the status says the current batch was started with.
pub fn current_batch_planned(status: &RolloutJobStatus) -> i64 {
    status
        .batches
        .iter()
        .find(|b| b.index == status.current_batch)
        .map_or(0, |b| b.counts.targets)
}

/// A step pause after the last finished batch: `Some(message)` while it holds.
pub fn step_pause_active(
    job: &RolloutJob,
    status: &RolloutJobStatus,
    now: Timestamp,
) -> Option<String> {
    let steps = job.spec.batches.steps.as_ref()?;
    let batch = status
        .batches
        .iter()
        .find(|b| b.index == status.current_batch)?;
    let finished = batch.finish_time.as_ref()?.0;
    let pause = steps
        .get(usize::try_from(batch.index - 1).ok()?)?
        .pause
        .as_ref()?;
    match pause.seconds {
        Some(s) if finished + jiff::SignedDuration::from_secs(s) <= now => None,
        Some(s) => Some(format!("step pause after batch {}: {s}s", batch.index)),
        None if job.spec.approved_batch.unwrap_or(0) >= batch.index => None,
        None => Some(format!(
            "step pause after batch {n}: set spec.approvedBatch to {n} to go on",
            n = batch.index
        )),
    }
}

pub fn build_status(
    job: &RolloutJob,
    old: &RolloutJobStatus,
    plan: &plan::Plan,
    phase: RolloutPhase,
    pause_reason: Option<(&str, String)>,
    now: Timestamp,
) -> RolloutJobStatus {
    let generation = job.metadata.generation;
    let mut s = old.clone();
    s.observed_generation = generation;
    s.phase = phase;
    s.counts = plan.counts.clone();
    s.current_batch = plan.current_batch;
    s.total_batches = plan.total_batches.max(plan.current_batch);
    s.progress = Some(format!("{}/{}", s.current_batch, s.total_batches));
    s.start_time.get_or_insert(Time(now));

    // Batch summaries: the current one updated, a new one on start, bounded. The plan's batch
    // figures are those of the batch it started from: when it starts the next one, they are
    // the finished batch's last figures (its members all just reached their end).
    let finished = plan.started_batch.map_or(plan.current_batch, |n| n - 1);
    if let Some(b) = s.batches.iter_mut().find(|b| b.index == finished) {
        b.counts = plan.current_batch_counts.clone();
        if (plan.current_batch_done || plan.started_batch.is_some()) && b.finish_time.is_none() {
            b.finish_time = Some(Time(now));
            b.phase = "Completed".into();
        }
    }
    if let Some(started) = plan.started_batch {
        s.batches.push(BatchSummary {
            index: started,
            group: None,
            phase: "Progressing".into(),
            counts: TargetCounts::default(),
            start_time: Some(Time(now)),
            finish_time: None,
        });
    }
    if let Some(b) = s.batches.iter_mut().find(|b| b.index == plan.current_batch) {
        b.counts.targets = b.counts.targets.max(plan.current_batch_size);
        if plan.current_batch_group.is_some() {
            b.group.clone_from(&plan.current_batch_group);
        }
    }
    let excess = s.batches.len().saturating_sub(MAX_BATCH_SUMMARIES);
    s.batches.drain(..excess);

    for (t, o) in &plan.failures {
        s.recent_failures
            .retain(|f| !(f.node == t.node && f.workload == t.workload));
        s.recent_failures.push(TargetFailure {
            node: t.node.clone(),
            workload: t.workload.clone(),
            reason: o.reason.clone(),
            message: o.message.clone(),
            time: Some(Time(now)),
        });
    }
    let excess = s.recent_failures.len().saturating_sub(MAX_RECENT_FAILURES);
    s.recent_failures.drain(..excess);

    let message = match (&pause_reason, phase) {
        (Some((_, m)), _) => m.clone(),
        (None, RolloutPhase::Completed) => format!("{} targets on the new image", s.counts.updated),
        (None, RolloutPhase::RolledBack) => {
            "every updated target is back on its previous image".into()
        }
        (None, RolloutPhase::Aborted) => "aborted; updated targets keep the new image".into(),
        _ => format!(
            "batch {}: {} of {} targets updated, {} failed, {} skipped",
            s.progress.as_deref().unwrap_or_default(),
            s.counts.updated,
            s.counts.targets,
            s.counts.failed,
            s.counts.skipped
        ),
    };
    s.message = Some(message.clone());
    set_phase_conditions(&mut s, job, phase, pause_reason.as_ref(), &message, now);
    s
}

/// The conditions a phase implies, and the completion time of an ended job.
fn set_phase_conditions(
    s: &mut RolloutJobStatus,
    job: &RolloutJob,
    phase: RolloutPhase,
    pause_reason: Option<&(&str, String)>,
    message: &str,
    now: Timestamp,
) {
    let generation = job.metadata.generation;
    let c = &mut s.conditions;
    let progressing = !is_terminal(phase) && pause_reason.is_none();
    let reason = match phase {
        RolloutPhase::RollingBack => "RollingBack",
        RolloutPhase::Paused => "Paused",
        RolloutPhase::Completed => "Completed",
        RolloutPhase::RolledBack => "RolledBack",
        RolloutPhase::Aborted => "Aborted",
        _ => "BatchesRunning",
    };
    set_condition(
        c,
        "Progressing",
        progressing,
        reason,
        message,
        generation,
        now,
    );
    match pause_reason {
        Some((r, m)) => set_condition(c, "Paused", ConditionStatus::True, r, m, generation, now),
        None => set_condition(
            c,
            "Paused",
            ConditionStatus::False,
            "Running",
            "",
            generation,
            now,
        ),
    };
    let complete = matches!(phase, RolloutPhase::Completed | RolloutPhase::RolledBack);
    set_condition(
        c,
        "Complete",
        complete,
        reason,
        if complete { message } else { "" },
        generation,
        now,
    );
    let failed = phase == RolloutPhase::Aborted && !job.spec.abort;
    set_condition(
        c,
        "Failed",
        failed,
        if failed {
            "FailureBudgetExceeded"
        } else {
            "NoFailure"
        },
        if failed { message } else { "" },
        generation,
        now,
    );
    if is_terminal(phase) {
        s.completion_time.get_or_insert(Time(now));
    }
}

/// What an ending job records before it gives its workloads back: its final figures, with the
/// phase it had and the phase it ends in as `endingPhase`. `Complete` / `Failed` stay as they
/// were until the workloads are back ([`ended`]): whoever waits for them may act on the
/// workloads at once (a Kubernetes Job, too, turns `Complete` only after its pods are cleaned
/// up). A leader killed in between finds the figures final and only finishes the release.
pub fn ending(
    last: &RolloutJobStatus,
    old: &RolloutJobStatus,
    job: &RolloutJob,
    now: Timestamp,
) -> RolloutJobStatus {
    let mut s = last.clone();
    s.phase = old.phase;
    s.ending_phase = Some(last.phase);
    s.completion_time.clone_from(&old.completion_time);
    for type_ in ["Complete", "Failed"] {
        s.conditions.retain(|c| c.type_ != type_);
        s.conditions
            .extend(old.conditions.iter().filter(|c| c.type_ == type_).cloned());
    }
    let message = format!(
        "final figures recorded; giving the workloads back, then {:?}",
        last.phase
    );
    let generation = job.metadata.generation;
    set_condition(
        &mut s.conditions,
        "Progressing",
        ConditionStatus::True,
        "Releasing",
        &message,
        generation,
        now,
    );
    set_condition(
        &mut s.conditions,
        WORKLOADS_RELEASED,
        ConditionStatus::False,
        "Releasing",
        &message,
        generation,
        now,
    );
    s
}

/// The status of an ending job once its workloads are back: the phase it ends in, the
/// conditions that phase implies, `WorkloadsReleased=True`. The figures are not touched.
pub fn ended(held: &RolloutJobStatus, job: &RolloutJob, now: Timestamp) -> RolloutJobStatus {
    let mut s = held.clone();
    if let Some(phase) = s.ending_phase.take() {
        s.phase = phase;
        let message = s.message.clone().unwrap_or_default();
        set_phase_conditions(&mut s, job, phase, None, &message, now);
    }
    set_condition(
        &mut s.conditions,
        WORKLOADS_RELEASED,
        ConditionStatus::True,
        "Released",
        "every workload the job held is given back (those with pods behind stay held for a catch-up)",
        job.metadata.generation,
        now,
    );
    s
}

/// Whether the job's figures are final: ended, or ending (giving its workloads back).
pub fn figures_final(status: &RolloutJobStatus) -> bool {
    is_terminal(status.phase) || status.ending_phase.is_some()
}

/// The condition an ending job sets once every workload it held is given back.
pub const WORKLOADS_RELEASED: &str = "WorkloadsReleased";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_decides_before_pauses_and_a_rollback_only_pauses() {
        let spec: RolloutJobSpec = serde_json::from_value(serde_json::json!({
            "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "a"}}},
            "image": "a:2",
            "paused": true,
            "failurePolicy": {"tolerance": 0, "action": "Rollback"},
        }))
        .unwrap();
        let mut p = plan::Plan {
            budget_exceeded: true,
            ..plan::Plan::default()
        };
        p.counts.failed = 1;
        let situation = |rolling_back| Situation {
            spec: &spec,
            plan: &p,
            rolling_back,
            aborting: false,
            hand_edit: None,
            step_pause: None,
        };
        let forward = decide(&situation(false));
        assert_eq!(forward.phase, RolloutPhase::RollingBack);
        assert!(
            forward
                .budget_exceeded
                .unwrap()
                .contains("1 targets failed")
        );
        let back = decide(&situation(true));
        assert_eq!(back.phase, RolloutPhase::Paused);
        assert_eq!(back.pause.unwrap().0, "FailureBudgetExceeded");
        // Every target done, but the last failures broke the budget: not Completed.
        let done = plan::Plan {
            complete: true,
            ..p.clone()
        };
        assert_eq!(
            decide(&Situation {
                plan: &done,
                ..situation(false)
            })
            .phase,
            RolloutPhase::RollingBack
        );
        let calm = plan::Plan::default();
        let d = decide(&Situation {
            plan: &calm,
            ..situation(false)
        });
        assert_eq!(d.pause.unwrap().0, "SpecPaused");
    }

    /// Whoever waits for `Complete` (kubectl wait, a GitOps health check, the next step of a
    /// pipeline) may act on the workloads at once: the ending job records its final figures
    /// with the phase it had, and takes the ended phase only once the workloads are back.
    #[test]
    fn an_ending_job_turns_complete_only_once_its_workloads_are_back() {
        let job = RolloutJob::new(
            "j",
            serde_json::from_value(serde_json::json!({
                "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "a"}}},
                "image": "a:2",
            }))
            .unwrap(),
        );
        let t0: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let counts = TargetCounts {
            targets: 9,
            updated: 9,
            ready: 9,
            ..TargetCounts::default()
        };
        let p = plan::Plan {
            counts: counts.clone(),
            complete: true,
            ..plan::Plan::default()
        };
        let running = build_status(
            &job,
            &RolloutJobStatus::default(),
            &p,
            RolloutPhase::Progressing,
            None,
            t0,
        );
        let last = build_status(&job, &running, &p, RolloutPhase::Completed, None, t0);
        let condition = |s: &RolloutJobStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };

        let held = ending(&last, &running, &job, t0);
        assert_eq!(held.phase, RolloutPhase::Progressing);
        assert_eq!(held.ending_phase, Some(RolloutPhase::Completed));
        assert!(figures_final(&held) && !is_terminal(held.phase));
        assert_eq!(held.counts, counts, "the figures are the final ones");
        assert_eq!(held.completion_time, None);
        assert_eq!(
            condition(&held, "Complete"),
            Some(("False".into(), "BatchesRunning".into()))
        );
        assert_eq!(
            condition(&held, WORKLOADS_RELEASED),
            Some(("False".into(), "Releasing".into()))
        );

        let done = ended(&held, &job, t0);
        assert_eq!(
            (done.phase, done.ending_phase),
            (RolloutPhase::Completed, None)
        );
        assert_eq!(done.counts, counts);
        assert_eq!(
            condition(&done, "Complete"),
            Some(("True".into(), "Completed".into()))
        );
        assert_eq!(
            condition(&done, "Progressing"),
            Some(("False".into(), "Completed".into()))
        );
        assert_eq!(
            condition(&done, WORKLOADS_RELEASED),
            Some(("True".into(), "Released".into()))
        );
        assert!(done.completion_time.is_some());
        // A second pass (a new leader finishing the release) changes nothing.
        assert_eq!(ended(&done, &job, t0), done);
    }

    /// Issue 9: the batch table read READY 0 for finished batches (their last figures were
    /// never written: the plan that finished a batch also started the next) and GROUP `-`.
    #[test]
    fn a_finished_batch_keeps_its_last_figures_and_the_next_starts_empty_with_its_group() {
        let job = RolloutJob::new(
            "j",
            serde_json::from_value(serde_json::json!({
                "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "a"}}},
                "image": "a:2",
                "batches": {"size": 10, "groupBy": "station"},
            }))
            .unwrap(),
        );
        let t0: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let swapping = TargetCounts {
            targets: 10,
            pre_pulled: 10,
            updated: 10,
            ..TargetCounts::default()
        };
        let old = RolloutJobStatus {
            current_batch: 1,
            batches: vec![BatchSummary {
                index: 1,
                group: Some("st-1".into()),
                phase: "Progressing".into(),
                counts: swapping.clone(),
                start_time: Some(Time(t0)),
                finish_time: None,
            }],
            ..RolloutJobStatus::default()
        };
        let done = TargetCounts {
            ready: 10,
            ..swapping
        };
        let p = plan::Plan {
            current_batch: 2,
            current_batch_size: 10,
            current_batch_counts: done.clone(),
            current_batch_group: Some("st-2".into()),
            current_batch_done: true,
            started_batch: Some(2),
            ..plan::Plan::default()
        };
        let s = build_status(&job, &old, &p, RolloutPhase::Progressing, None, t0);
        let first = &s.batches[0];
        assert_eq!(
            (first.phase.as_str(), &first.counts),
            ("Completed", &done),
            "the finished batch shows its members Ready"
        );
        assert!(first.finish_time.is_some());
        let second = &s.batches[1];
        assert_eq!(second.index, 2);
        assert_eq!(second.group.as_deref(), Some("st-2"));
        assert_eq!(
            second.counts,
            TargetCounts {
                targets: 10,
                ..TargetCounts::default()
            },
            "a batch just started has done nothing yet"
        );
    }

    #[test]
    fn step_pauses_hold_for_their_time_or_until_approved() {
        let mut job = RolloutJob::new(
            "j",
            serde_json::from_value(serde_json::json!({
                "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "a"}}},
                "image": "a:2",
                "batches": {"steps": [
                    {"size": 1, "pause": {"seconds": 60}},
                    {"size": 1, "pause": {}},
                    {"size": 1}
                ]}
            }))
            .unwrap(),
        );
        let t0: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let finished = |index| RolloutJobStatus {
            current_batch: index,
            batches: vec![BatchSummary {
                index,
                finish_time: Some(Time(t0)),
                ..BatchSummary::default()
            }],
            ..RolloutJobStatus::default()
        };
        let at = |s| t0 + jiff::SignedDuration::from_secs(s);
        assert!(step_pause_active(&job, &finished(1), at(59)).is_some());
        assert!(step_pause_active(&job, &finished(1), at(60)).is_none());
        let held = step_pause_active(&job, &finished(2), at(3600)).unwrap();
        assert!(held.contains("spec.approvedBatch to 2"), "{held}");
        job.spec.approved_batch = Some(2);
        assert!(step_pause_active(&job, &finished(2), at(1)).is_none());
        assert!(
            step_pause_active(&job, &finished(3), at(1)).is_none(),
            "no pause after the last step"
        );
    }
}
