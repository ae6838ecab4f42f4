//! One reconcile of an active RolloutJob (`apply`): read the workloads, put them in shape,
//! read the targets, plan (pure), record the status, act, report, and say when the clock must
//! wake the job next (pod and node changes wake it through [`crate::wake`]).
//!
//! An ending job records its final figures first (with `endingPhase`), gives its workloads
//! back after, and only then takes its ended phase (`WorkloadsReleased=True`, `Complete`): a
//! leader killed in between finds the figures final and only finishes the release, which
//! never touches them (figures recomputed from released workloads, their marks gone, once
//! moved backwards), and whoever waits for `Complete` finds the workloads already back.

use crate::cached::{CachedNode, CachedPod};
use edgefleet_api::rollout::{RolloutJob, RolloutJobSpec, RolloutJobStatus, RolloutPhase};
use edgefleet_kit::{ConditionStatus, set_condition};
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::act::Actor;
use crate::behind::{self, Behind};
use crate::controller::{
    Context, OPERATOR, get_workload, list_workloads, patch_workload, release, selector_string,
    workload_key, workload_pods,
};
use crate::error::{Error, Result};
use crate::index::WorkloadKey;
use crate::plan::{self, Direction, Snapshot, Target};
use crate::report::{events, export_metrics, export_phase, publish};
use crate::snapshot;
use crate::status::{
    Decision, Situation, WORKLOADS_RELEASED, build_status, current_batch_planned, decide, ended,
    ending, figures_final, is_terminal, step_pause_active,
};
use crate::workload;

/// One workload the job drives, resolved against the cluster.
struct Workload {
    obj: workload::Object,
    container: String,
    /// The image its targets must end on in the current direction.
    image: String,
}

/// What the read step found that stops the job from acting, with its condition reason.
struct Blocked {
    phase: RolloutPhase,
    reason: &'static str,
    message: String,
    requeue: Duration,
    /// The workload held by another job this one waits for (its release wakes this job).
    waiting_for: Option<WorkloadKey>,
}

/// The longest the clock leaves an active job alone: a safety net under the watches (a lost
/// event, a deadline not foreseen), not what drives progress.
pub const CLOCK_CEILING: Duration = Duration::from_secs(10);

/// What one reconcile is about: the fresh job, its last status, which way it goes.
struct Run<'a> {
    job: &'a RolloutJob,
    old: RolloutJobStatus,
    ns: String,
    uid: String,
    now: Timestamp,
    /// The first reconcile of a rollback: it starts its own batches from 1.
    switching: bool,
    direction: Direction,
}

/// One reconcile of an active job, as explicit steps: resolve (which workloads; may this job
/// drive them) → prepare (put them in shape) → snapshot (read the targets) → plan (pure) →
/// status (pure) → act (status and actions, in the order restarts need) → report.
pub(crate) async fn apply(cached: &RolloutJob, ctx: &Context) -> Result<Requeue> {
    // The plan builds on the status this operator wrote last (current batch, batch summaries,
    // recent failures). The watch cache can lag behind that write under load, and a plan made
    // from a stale status would start a batch twice; a quorum read costs one GET.
    let ns = cached.namespace().ok_or(Error::MissingField("namespace"))?;
    let job_ref = ObjectRef::from_obj(cached);
    let Some(fresh) = Api::<RolloutJob>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&cached.name_any())
        .await?
    else {
        ctx.interest.forget(&job_ref);
        return Ok(Requeue::await_change());
    };
    let job = &fresh;
    let old = job.status.clone().unwrap_or_default();
    if figures_final(&old) {
        ctx.interest.forget(&job_ref);
        return finish_release(ctx, job, &old).await;
    }
    let rolling_back = job.spec.rollback || old.phase == RolloutPhase::RollingBack;
    let run = Run {
        job,
        switching: rolling_back && old.phase != RolloutPhase::RollingBack,
        direction: if rolling_back {
            Direction::ROLLBACK
        } else {
            Direction::FORWARD
        },
        uid: job.uid().ok_or(Error::MissingField("uid"))?,
        ns,
        old,
        now: Timestamp::now(),
    };

    let mut workloads = match resolve_workloads(job, ctx, &run.ns, &run.uid, rolling_back).await? {
        Ok(w) => w,
        Err(b) => {
            match &b.waiting_for {
                Some(w) => ctx.interest.waits_for(&job_ref, &run.uid, vec![w.clone()]),
                None => ctx.interest.forget(&job_ref),
            }
            return blocked(ctx, &run, b).await;
        }
    };
    ctx.interest.holds(
        &job_ref,
        &run.uid,
        workloads
            .iter()
            .map(|w| workload_key(&run.ns, &w.obj))
            .collect(),
    );
    let hand_edit = prepare(ctx, &run, &mut workloads).await?;
    let (targets, other_direction, pods) = read_targets(ctx, &run, &workloads);
    let step_pause = step_pause_active(job, &run.old, run.now);
    let snap = snapshot_of(&run, targets, hand_edit.is_some() || step_pause.is_some());
    let plan = plan::plan(&snap);
    let deadline = [
        plan::next_deadline(&snap),
        status_deadline(job, &run.old, run.now),
    ]
    .into_iter()
    .flatten()
    .min();
    tracing::debug!(
        batch = plan.current_batch,
        targets = plan.counts.targets,
        updated = plan.counts.updated,
        pre_pulled = plan.counts.pre_pulled,
        with_prepull = snap.targets.iter().filter(|t| t.prepull.is_some()).count(),
        marked = snap
            .targets
            .iter()
            .filter(|t| t.current.as_ref().is_some_and(|p| p.batch.is_some()))
            .count(),
        actions = plan.actions.len(),
        "planned"
    );
    let decision = decide(&Situation {
        spec: &job.spec,
        plan: &plan,
        rolling_back,
        aborting: job.spec.abort,
        hand_edit,
        step_pause,
    });
    let behind: Vec<Behind> = workloads
        .iter()
        .map(|w| Behind {
            workload: w.obj.label(),
            nodes: workload::pods_behind(&w.obj, &pods),
        })
        .collect();
    let status = status_of(
        &run,
        &plan,
        &decision,
        &behind,
        &direction_image(&workloads, &job.spec),
    );
    act(ctx, &run, &workloads, &plan, &status, &other_direction).await?;
    report(ctx, &run, &snap, &plan, &decision, &status).await;

    Ok(if is_terminal(decision.phase) {
        ctx.interest.forget(&job_ref);
        Requeue::await_change()
    } else {
        Requeue::requeue(clock_wait(deadline, run.now))
    })
}

/// How long until the clock must wake the job: just past the next deadline, between a second
/// (deadlines are recorded to the second) and [`CLOCK_CEILING`].
pub fn clock_wait(deadline: Option<Timestamp>, now: Timestamp) -> Duration {
    deadline
        .and_then(|at| Duration::try_from(at.duration_since(now)).ok())
        .map_or(CLOCK_CEILING, |d| {
            (d + Duration::from_millis(100)).clamp(Duration::from_secs(1), CLOCK_CEILING)
        })
}

/// Deadlines the status knows (not the plan): a step pause ending, the catch-up window closing.
fn status_deadline(job: &RolloutJob, old: &RolloutJobStatus, now: Timestamp) -> Option<Timestamp> {
    let batch = old.batches.iter().find(|b| b.index == old.current_batch)?;
    let finished = batch.finish_time.as_ref()?.0;
    let pause = job
        .spec
        .batches
        .steps
        .as_ref()
        .and_then(|steps| {
            steps
                .get(usize::try_from(batch.index - 1).ok()?)?
                .pause
                .as_ref()
        })
        .and_then(|p| p.seconds)
        .map(|s| finished + SignedDuration::from_secs(s));
    let window = finished + SignedDuration::from_secs(job.spec.catch_up.window_seconds);
    [pause, Some(window)]
        .into_iter()
        .flatten()
        .filter(|at| *at > now)
        .min()
}

/// A job whose final figures are recorded (ending, or ended by an older version that did not
/// record the release): give every workload back (idempotent; a workload no longer locked by
/// the job is left alone), then take the ended phase ([`ended`]). Never touches the figures.
async fn finish_release(
    ctx: &Context,
    job: &RolloutJob,
    old: &RolloutJobStatus,
) -> Result<Requeue> {
    let released = old
        .conditions
        .iter()
        .any(|c| c.type_ == WORKLOADS_RELEASED && c.status == "True");
    if released && old.ending_phase.is_none() {
        return Ok(Requeue::await_change());
    }
    let ns = job.namespace().ok_or(Error::MissingField("namespace"))?;
    let uid = job.uid().ok_or(Error::MissingField("uid"))?;
    let phase = old.ending_phase.unwrap_or(old.phase);
    release(
        ctx,
        &ns,
        job.spec.target.kind,
        &uid,
        phase != RolloutPhase::Aborted,
    )
    .await?;
    ctx.stall.at("released").await;
    let status = ended(old, job, Timestamp::now());
    write_status(ctx, job, old, &status).await?;
    export_phase(ctx, &ns, &job.name_any(), status.phase);
    Ok(Requeue::await_change())
}

/// Resolve found a reason not to act: say so (a condition, a warning event once).
async fn blocked(ctx: &Context, run: &Run<'_>, b: Blocked) -> Result<Requeue> {
    let (job, old, now, ns) = (run.job, &run.old, run.now, &run.ns);
    let spec = &job.spec;
    let mut status = old.clone();
    status.phase = b.phase;
    status.message = Some(b.message.clone());
    status.observed_generation = job.metadata.generation;
    set_condition(
        &mut status.conditions,
        "Progressing",
        ConditionStatus::False,
        b.reason,
        &b.message,
        job.metadata.generation,
        now,
    );
    if b.phase == RolloutPhase::Failed {
        // Ended without a plan: still say what is left behind (and held).
        // A selector that cannot be rendered selects nothing: nothing can be behind.
        let workloads = match selector_string(&spec.target.selector) {
            Ok(s) => {
                list_workloads(ctx, ns, spec.target.kind, &ListParams::default().labels(&s)).await?
            }
            Err(_) => Vec::new(),
        };
        let behind: Vec<Behind> = workloads
            .iter()
            .map(|w| Behind {
                workload: w.label(),
                nodes: workload::pods_behind(w, &workload_pods(ctx, ns, w)),
            })
            .collect();
        behind::report(
            &mut status,
            spec.target.kind,
            &spec.image,
            &behind,
            job.metadata.generation,
            now,
        );
        set_condition(
            &mut status.conditions,
            "Failed",
            ConditionStatus::True,
            b.reason,
            &b.message,
            job.metadata.generation,
            now,
        );
    }
    if old.message.as_deref() != Some(&b.message) {
        publish(ctx, job, EventType::Warning, b.reason, &b.message).await;
    }
    write_status(ctx, job, old, &status).await?;
    export_phase(ctx, ns, &job.name_any(), b.phase);
    Ok(Requeue::requeue(b.requeue))
}

/// Prepare: never fight a person (a hand edit pauses the job and is returned); otherwise put
/// the workloads in the shape the job drives them in (a no-op once they are).
async fn prepare(
    ctx: &Context,
    run: &Run<'_>,
    workloads: &mut [Workload],
) -> Result<Option<String>> {
    let hand_edit = workloads
        .iter()
        .find_map(|w| workload::changed_by_hand(&w.obj, &w.container, &run.uid));
    if hand_edit.is_none() && !run.job.spec.abort {
        prepare_workloads(ctx, run.job, &run.ns, &run.uid, workloads).await?;
    }
    Ok(hand_edit)
}

/// Snapshot: the targets of every workload (from the caches), in rollout order; the job's
/// pre-pull pods of the other direction (to delete); the namespace's pods.
fn read_targets(
    ctx: &Context,
    run: &Run<'_>,
    workloads: &[Workload],
) -> (Vec<Target>, Vec<String>, Vec<Arc<CachedPod>>) {
    let (job, direction) = (run.job, &run.direction);
    // Only the job's own pods, from the index: its workloads' pods and its pre-pull pods.
    let mut all_pods: Vec<Arc<CachedPod>> = ctx
        .pods
        .of_job(&run.uid)
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(run.ns.as_str()))
        .collect();
    for w in workloads {
        all_pods.extend(workload_pods(ctx, &run.ns, &w.obj));
    }
    let nodes = nodes_of(ctx, &all_pods);
    let (prepulls, other_direction) = snapshot::prepull_pods(&all_pods, job, direction);
    let mut targets: Vec<Target> = Vec::new();
    for w in workloads {
        match &w.obj {
            workload::Object::DaemonSet(ds) => targets.extend(snapshot::daemonset_targets(
                ds,
                &w.container,
                &w.image,
                direction,
                job,
                &all_pods,
                &nodes,
                &prepulls,
            )),
            workload::Object::StatefulSet(sts) => {
                targets.extend(snapshot::statefulset_targets(
                    sts,
                    w.obj.partition(),
                    &w.container,
                    &w.image,
                    direction,
                    job,
                    &all_pods,
                    &nodes,
                    &prepulls,
                ));
            }
            workload::Object::Deployment(d) => targets.extend(snapshot::deployment_target(
                d,
                &w.container,
                &w.image,
                direction,
                job,
                &all_pods,
                &nodes,
                &prepulls,
            )),
        }
    }
    plan::order_targets(&mut targets);

    let stale = other_direction.iter().map(|p| p.name_any()).collect();
    (targets, stale, all_pods)
}

/// The cached nodes these pods are bound (or pinned) to, or pre-pulling for.
fn nodes_of(ctx: &Context, pods: &[Arc<CachedPod>]) -> HashMap<String, Arc<CachedNode>> {
    let mut nodes = HashMap::new();
    for pod in pods {
        let names = [
            pod.intended_node(),
            pod.annotations()
                .get(edgefleet_api::rollout::keys::NODE_ANNOTATION)
                .cloned(),
        ];
        for name in names.into_iter().flatten() {
            if !nodes.contains_key(&name)
                && let Some(node) = ctx.nodes.get(&ObjectRef::new(&name))
            {
                nodes.insert(name, node);
            }
        }
    }
    nodes
}

/// Plan input: the targets, and what the status and spec say of the batch in progress.
fn snapshot_of<'a>(run: &Run<'a>, targets: Vec<Target>, held: bool) -> Snapshot<'a> {
    let (spec, old, now) = (&run.job.spec, &run.old, run.now);
    let (current_batch, current_batch_size) = if run.switching {
        (0, 0)
    } else {
        plan::recover_batch(
            &run.direction,
            &targets,
            old.current_batch,
            current_batch_planned(old),
        )
    };
    Snapshot {
        spec,
        direction: run.direction.clone(),
        targets,
        current_batch,
        current_batch_size,
        hold: spec.paused || held,
        stop: spec.abort,
        catch_up_open: catch_up_open(old, spec, now),
        step_pause_pending: !old
            .batches
            .iter()
            .any(|b| b.index == old.current_batch && b.finish_time.is_some()),
        now,
    }
}

/// Status (pure): the phase decided, counts, batches, conditions, catch-up and what is behind.
fn status_of(
    run: &Run<'_>,
    plan: &plan::Plan,
    decision: &Decision,
    behind: &[Behind],
    image: &str,
) -> RolloutJobStatus {
    let (job, now) = (run.job, run.now);
    let spec = &job.spec;
    let phase = decision.phase;
    let mut base = run.old.clone();
    if run.switching {
        base.batches.clear();
        base.current_batch = 0;
    }
    let mut status = build_status(job, &base, plan, phase, decision.pause.clone(), now);
    if phase == RolloutPhase::Progressing && plan.catching_up > 0 && !plan.complete {
        catching_up_message(&mut status, plan, spec, job.metadata.generation, now);
    }
    behind::report(
        &mut status,
        spec.target.kind,
        image,
        behind,
        job.metadata.generation,
        now,
    );
    status
}

/// Act: the status and the plan's actions, in the order restarts need. Normally the status
/// goes first: a batch is recorded as started (with its planned size) before any target is
/// chosen for it, so a crash in between is finished by the next plan instead of starting the
/// batch a second time. An ending job runs its last actions (marks, idempotent), records its
/// final figures, and only then gives its workloads back ([`finish_release`]).
async fn act(
    ctx: &Context,
    run: &Run<'_>,
    workloads: &[Workload],
    plan: &plan::Plan,
    status: &RolloutJobStatus,
    other_direction: &[String],
) -> Result<()> {
    let (job, ns) = (run.job, &run.ns);
    let spec = &job.spec;
    let actor = Actor {
        pods: Api::namespaced(ctx.client.clone(), ns),
        kind: spec.target.kind,
        deployments: Api::namespaced(ctx.client.clone(), ns),
        statefulsets: Api::namespaced(ctx.client.clone(), ns),
        containers: workloads
            .iter()
            .map(|w| (w.obj.name(), w.container.clone()))
            .collect(),
        job,
        direction: &run.direction,
        pull_secrets: spec.pre_pull.image_pull_secrets.clone().unwrap_or_default(),
        metrics: &ctx.rollout,
        field_manager: OPERATOR,
    };
    if is_terminal(status.phase) {
        // The last marks, then the final figures, then the release, then the ended phase:
        // figures are never recomputed from workloads already given back.
        actor.run(plan.actions.clone()).await?;
        let held = ending(status, &run.old, job, run.now);
        write_status(ctx, job, &run.old, &held).await?;
        finish_release(ctx, job, &held).await?;
    } else {
        write_status(ctx, job, &run.old, status).await?;
        for stale in other_direction {
            let _ = actor.pods.delete(stale, &DeleteParams::default()).await;
        }
        actor.run(plan.actions.clone()).await?;
    }
    Ok(())
}

/// Report: events for what changed, and the job's gauges.
async fn report(
    ctx: &Context,
    run: &Run<'_>,
    snap: &Snapshot<'_>,
    plan: &plan::Plan,
    decision: &Decision,
    status: &RolloutJobStatus,
) {
    let job = run.job;
    if let Some(message) = &decision.budget_exceeded
        && run.old.phase != decision.phase
    {
        publish(
            ctx,
            job,
            EventType::Warning,
            "FailureBudgetExceeded",
            message,
        )
        .await;
    }
    events(ctx, job, &run.old, status, plan).await;
    export_metrics(
        ctx,
        job,
        snap,
        &run.old,
        status,
        decision.budget_exceeded.is_some(),
    );
}

/// Finds the job's workloads and checks it may drive them; `Err(Blocked)` says why not.
async fn resolve_workloads(
    job: &RolloutJob,
    ctx: &Context,
    ns: &str,
    uid: &str,
    rolling_back: bool,
) -> Result<std::result::Result<Vec<Workload>, Blocked>> {
    let spec = &job.spec;
    let kind = spec.target.kind;
    let selector = match selector_string(&spec.target.selector) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Err(Blocked {
                phase: RolloutPhase::Failed,
                reason: "InvalidSelector",
                message: format!("spec.target.selector: {e}"),
                requeue: Duration::from_secs(300),
                waiting_for: None,
            }));
        }
    };
    let list = list_workloads(ctx, ns, kind, &ListParams::default().labels(&selector)).await?;
    if list.is_empty() {
        return Ok(Err(Blocked {
            phase: RolloutPhase::Pending,
            reason: "NoTargets",
            message: format!("no {kind:?} in namespace {ns} matches selector {selector:?}"),
            // Workloads are not watched: the clock looks for them again.
            requeue: CLOCK_CEILING,
            waiting_for: None,
        }));
    }
    let jobs: Api<RolloutJob> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = Vec::new();
    for obj in list {
        let name = obj.name();
        let containers = obj.containers();
        let container =
            match snapshot::target_container(&containers, spec.target.container.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    return Ok(Err(Blocked {
                        phase: RolloutPhase::Pending,
                        reason: "InvalidTarget",
                        message: format!("{kind:?} {name} {e}"),
                        requeue: CLOCK_CEILING,
                        waiting_for: None,
                    }));
                }
            };
        if let Some((holder, holder_uid)) = workload::lock_holder(&obj)
            && holder_uid != uid
            && let Some(other) = jobs.get_opt(&holder).await?
            && other.uid().as_deref() == Some(holder_uid.as_str())
            && !other.status.as_ref().is_some_and(|s| is_terminal(s.phase))
        {
            return Ok(Err(Blocked {
                phase: RolloutPhase::Pending,
                reason: "WaitingForWorkload",
                message: format!(
                    "{kind:?} {name} is being rolled out by RolloutJob {holder}; this job starts when it ends"
                ),
                // Woken when the holder gives it back; the clock in case that happened
                // under another leader, or the holder was deleted without a release seen here.
                requeue: CLOCK_CEILING,
                waiting_for: Some(workload_key(ns, &obj)),
            }));
        }
        let image = if rolling_back {
            match workload::previous_image(&obj) {
                Some(i) => i,
                None => {
                    return Ok(Err(Blocked {
                        phase: RolloutPhase::Failed,
                        reason: "NoPreviousImage",
                        message: format!(
                            "{kind:?} {name} has no recorded previous image to roll back to"
                        ),
                        requeue: Duration::from_secs(300),
                        waiting_for: None,
                    }));
                }
            }
        } else {
            spec.image.clone()
        };
        out.push(Workload {
            obj,
            container,
            image,
        });
    }
    Ok(Ok(out))
}

async fn prepare_workloads(
    ctx: &Context,
    job: &RolloutJob,
    ns: &str,
    uid: &str,
    workloads: &mut [Workload],
) -> Result<()> {
    for w in workloads {
        // The lock is taken on the version read (409 when it changed): on a conflict, read
        // it again and decide again — held by another job now, or merely updated (status).
        let mut attempts = 0;
        while let Some(patch) =
            workload::prepare_patch(&w.obj, &job.name_any(), uid, &w.container, &w.image)
        {
            match patch_workload(ctx, ns, &w.obj, &patch).await {
                Ok(stored) => {
                    // The plan reads the workload as it is now (a StatefulSet's partition).
                    w.obj = stored;
                    break;
                }
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 && attempts < 3 => {
                    attempts += 1;
                    w.obj = get_workload(ctx, ns, &w.obj).await?;
                    if let Some((holder, holder_uid)) = workload::lock_holder(&w.obj)
                        && holder_uid != uid
                    {
                        return Err(Error::LockTaken {
                            workload: w.obj.label(),
                            holder,
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Within `spec.catchUp.windowSeconds` of the current batch's finish (or that batch still
/// running): offline targets are caught up when their node returns.
fn catch_up_open(old: &RolloutJobStatus, spec: &RolloutJobSpec, now: Timestamp) -> bool {
    let finished = old
        .batches
        .iter()
        .find(|b| b.index == old.current_batch)
        .and_then(|b| b.finish_time.as_ref());
    finished.is_none_or(|f| f.0 + SignedDuration::from_secs(spec.catch_up.window_seconds) > now)
}

/// Every batch is done but offline targets are waited for: say until when, and why.
fn catching_up_message(
    status: &mut RolloutJobStatus,
    plan: &plan::Plan,
    spec: &RolloutJobSpec,
    generation: Option<i64>,
    now: Timestamp,
) {
    if !plan.all_terminal {
        return;
    }
    let message = format!(
        "every batch done; catching up {} targets whose node is offline: each is pre-pulled then swapped when its node returns, for up to spec.catchUp.windowSeconds ({}s) after the last batch",
        plan.catching_up, spec.catch_up.window_seconds
    );
    status.message = Some(message.clone());
    set_condition(
        &mut status.conditions,
        "Progressing",
        ConditionStatus::True,
        "CatchingUp",
        &message,
        generation,
        now,
    );
}

/// The image the job drives its workloads to now (each one's previous image, rolling back).
fn direction_image(
    workloads: &[Workload],
    spec: &edgefleet_api::rollout::RolloutJobSpec,
) -> String {
    workloads
        .first()
        .map_or_else(|| spec.image.clone(), |w| w.image.clone())
}

/// Applies the status (server-side, this operator's field manager) unless nothing changed.
async fn write_status(
    ctx: &Context,
    job: &RolloutJob,
    old: &RolloutJobStatus,
    status: &RolloutJobStatus,
) -> Result<()> {
    if status == old {
        return Ok(());
    }
    let api: Api<RolloutJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    edgefleet_kit::apply_status(&api, &job.name_any(), status, OPERATOR).await?;
    Ok(())
}
