//! One reconcile of an active RolloutJob (`apply`): read the workloads, put them in shape,
//! read the targets, plan (pure), record the status, act, report.

use edgefleet_api::rollout::{RolloutJob, RolloutJobSpec, RolloutJobStatus, RolloutPhase};
use edgefleet_kit::{ConditionStatus, set_condition};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::act::Actor;
use crate::behind::{self, Behind};
use crate::controller::{
    Context, OPERATOR, list_workloads, namespace_pods, patch_workload, release, selector_string,
};
use crate::error::{Error, Result};
use crate::plan::{self, Direction, Snapshot, Target};
use crate::report::{events, export_metrics, export_phase, publish};
use crate::snapshot;
use crate::status::{
    Situation, build_status, current_batch_planned, decide, is_terminal, step_pause_active,
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
}

pub(crate) async fn apply(cached: &RolloutJob, ctx: &Context) -> Result<Requeue> {
    // The plan builds on the status this operator wrote last (current batch, batch summaries,
    // recent failures). The watch cache can lag behind that write under load, and a plan made
    // from a stale status would start a batch twice; a quorum read costs one GET.
    let ns = cached.namespace().ok_or(Error::MissingField("namespace"))?;
    let Some(fresh) = Api::<RolloutJob>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&cached.name_any())
        .await?
    else {
        return Ok(Requeue::await_change());
    };
    let job = &fresh;
    let old = job.status.clone().unwrap_or_default();
    if is_terminal(old.phase) {
        return Ok(Requeue::await_change());
    }
    let uid = job.uid().ok_or(Error::MissingField("uid"))?;
    let spec = &job.spec;
    let now = Timestamp::now();

    let rolling_back = spec.rollback || old.phase == RolloutPhase::RollingBack;
    let direction = if rolling_back {
        Direction::ROLLBACK
    } else {
        Direction::FORWARD
    };
    let aborting = spec.abort;
    let switching = rolling_back && old.phase != RolloutPhase::RollingBack;

    // Read: the workloads, and whether this job may drive them.
    let (workloads, blocked) = match resolve_workloads(job, ctx, &ns, &uid, rolling_back).await? {
        Ok(w) => (w, None),
        Err(b) => (Vec::new(), Some(b)),
    };
    if let Some(b) = blocked {
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
            let selector = ListParams::default().labels(&selector_string(&spec.target.selector));
            let pods = namespace_pods(ctx, &ns);
            let behind: Vec<Behind> = list_workloads(ctx, &ns, spec.target.kind, &selector)
                .await?
                .iter()
                .map(|w| Behind {
                    workload: w.label(),
                    nodes: workload::pods_behind(w, &pods),
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
        write_status(ctx, job, &old, &status).await?;
        export_phase(ctx, &ns, &job.name_any(), b.phase);
        return Ok(Requeue::requeue(b.requeue));
    }

    // Hand edits: never fight a person; pause and say what changed.
    let mut workloads = workloads;
    let hand_edit = workloads
        .iter()
        .find_map(|w| workload::changed_by_hand(&w.obj, &w.container, &uid));
    if hand_edit.is_none() && !aborting {
        prepare_workloads(ctx, job, &ns, &uid, &mut workloads).await?;
    }

    // Snapshot → plan.
    let all_pods = namespace_pods(ctx, &ns);
    let nodes: HashMap<String, Arc<Node>> = ctx
        .nodes
        .state()
        .into_iter()
        .map(|n| (n.name_any(), n))
        .collect();
    let (prepulls, other_direction) = snapshot::prepull_pods(&all_pods, job, &direction);
    let mut targets: Vec<Target> = Vec::new();
    for w in &workloads {
        match &w.obj {
            workload::Object::DaemonSet(ds) => targets.extend(snapshot::daemonset_targets(
                ds,
                &w.container,
                &w.image,
                &direction,
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
                    &direction,
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
                &direction,
                job,
                &all_pods,
                &nodes,
                &prepulls,
            )),
        }
    }
    plan::order_targets(&mut targets);

    let (current_batch, current_batch_size) = if switching {
        (0, 0)
    } else {
        plan::recover_batch(
            &direction,
            &targets,
            old.current_batch,
            current_batch_planned(&old),
        )
    };
    let step_pause = step_pause_active(job, &old, now);
    let hold = spec.paused || hand_edit.is_some() || step_pause.is_some();
    let snap = Snapshot {
        spec,
        direction: direction.clone(),
        targets,
        // The first reconcile of a rollback starts its own batches from 1.
        current_batch,
        current_batch_size,
        hold,
        stop: aborting,
        catch_up_open: catch_up_open(&old, spec, now),
        step_pause_pending: !old
            .batches
            .iter()
            .any(|b| b.index == old.current_batch && b.finish_time.is_some()),
        now,
    };
    let plan = plan::plan(&snap);
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
        spec,
        plan: &plan,
        rolling_back,
        aborting,
        hand_edit,
        step_pause,
    });
    let phase = decision.phase;
    let pause_reason = decision.pause;
    if let Some(message) = &decision.budget_exceeded
        && old.phase != phase
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

    let mut base = old.clone();
    if switching {
        base.batches.clear();
        base.current_batch = 0;
    }
    let mut status = build_status(job, &base, &plan, phase, pause_reason.clone(), now);
    let behind: Vec<Behind> = workloads
        .iter()
        .map(|w| Behind {
            workload: w.obj.label(),
            nodes: workload::pods_behind(&w.obj, &all_pods),
        })
        .collect();
    if phase == RolloutPhase::Progressing && plan.catching_up > 0 && !plan.complete {
        catching_up_message(&mut status, &plan, spec, job.metadata.generation, now);
    }
    behind::report(
        &mut status,
        spec.target.kind,
        &direction_image(&workloads, spec),
        &behind,
        job.metadata.generation,
        now,
    );

    // Order matters for restarts. Normally the status goes first: a batch is recorded as
    // started (with its planned size) before any target is chosen for it, so a crash in
    // between is finished by the next plan instead of starting the batch a second time. An
    // ending job acts first and records last: releasing the workloads is idempotent, and a
    // terminal status is never looked at again.
    let actor = Actor {
        pods: Api::namespaced(ctx.client.clone(), &ns),
        kind: spec.target.kind,
        deployments: Api::namespaced(ctx.client.clone(), &ns),
        statefulsets: Api::namespaced(ctx.client.clone(), &ns),
        containers: workloads
            .iter()
            .map(|w| (w.obj.name(), w.container.clone()))
            .collect(),
        job,
        direction: &direction,
        pull_secrets: spec.pre_pull.image_pull_secrets.clone().unwrap_or_default(),
        metrics: &ctx.rollout,
        field_manager: OPERATOR,
    };
    if is_terminal(phase) {
        actor.run(plan.actions.clone()).await?;
        release(
            ctx,
            &ns,
            spec.target.kind,
            &uid,
            phase != RolloutPhase::Aborted,
        )
        .await?;
        write_status(ctx, job, &old, &status).await?;
    } else {
        write_status(ctx, job, &old, &status).await?;
        for stale in &other_direction {
            let _ = actor
                .pods
                .delete(&stale.name_any(), &DeleteParams::default())
                .await;
        }
        actor.run(plan.actions.clone()).await?;
    }
    events(ctx, job, &old, &status, &plan).await;
    export_metrics(
        ctx,
        job,
        &snap,
        &old,
        &status,
        decision.budget_exceeded.is_some(),
    );

    Ok(if is_terminal(phase) {
        Requeue::await_change()
    } else if phase == RolloutPhase::Paused {
        Requeue::requeue(Duration::from_secs(5))
    } else {
        Requeue::requeue(Duration::from_secs(2))
    })
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
    let selector = selector_string(&spec.target.selector);
    let list = list_workloads(ctx, ns, kind, &ListParams::default().labels(&selector)).await?;
    if list.is_empty() {
        return Ok(Err(Blocked {
            phase: RolloutPhase::Pending,
            reason: "NoTargets",
            message: format!("no {kind:?} in namespace {ns} matches selector {selector:?}"),
            requeue: Duration::from_secs(30),
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
                        requeue: Duration::from_secs(60),
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
                requeue: Duration::from_secs(10),
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
        if let Some(patch) =
            workload::prepare_patch(&w.obj, &job.name_any(), uid, &w.container, &w.image)
        {
            // The plan reads the workload as it is now (a StatefulSet's partition).
            w.obj = patch_workload(ctx, ns, &w.obj, &patch).await?;
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
