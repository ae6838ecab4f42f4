//! The RolloutJob controller: read → plan (pure, in [`crate::plan`]) → act → status.
//!
//! Pods and nodes are read from reflector caches (stripped to the fields the plan reads, so
//! memory stays flat at 100,000 pods); workloads are listed per reconcile (few objects). Active
//! jobs are requeued every couple of seconds: progress is driven by the clock (timeouts,
//! minReadySeconds) as much as by events.

use edgefleet_api::rollout::{
    RolloutJob, RolloutJobSpec, RolloutJobStatus, RolloutPhase, WorkloadKind, keys,
};
use edgefleet_kit::{ConditionStatus, ReconcileMetrics, set_condition};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::act::Actor;
use crate::behind::{self, Behind};
use crate::error::{Error, Result};
use crate::metrics::RolloutMetrics;
use crate::plan::{self, Direction, Snapshot, Target};
use crate::report::{events, export_metrics, export_phase, forget, publish};
use crate::snapshot;
use crate::status::{
    Situation, build_status, current_batch_planned, decide, is_terminal, step_pause_active,
};
use crate::workload;

/// Field manager and event reporter of this operator.
pub const OPERATOR: &str = "edgefleet-rollout";
/// Held while the job may have changed a workload: deletion restores it first.
pub const FINALIZER: &str = "edgefleet.io/rollout-cleanup";

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub recorder: Recorder,
    pub metrics: ReconcileMetrics,
    pub rollout: RolloutMetrics,
}

/// Runs the controller (and the pod and node caches it reads) until `shutdown` trips.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: ReconcileMetrics,
    rollout: RolloutMetrics,
    recorder: Recorder,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (pods, pod_writer) = reflector::store();
    let pods_api: Api<Pod> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let jobs_api: Api<RolloutJob> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pod_cache = watcher(pods_api, watcher::Config::default())
        .default_backoff()
        .modify(strip_pod)
        .reflect(pod_writer)
        .for_each(|_| futures::future::ready(()));
    let (nodes, node_writer) = reflector::store();
    let node_cache = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip_node)
        .reflect(node_writer)
        .for_each(|_| futures::future::ready(()));

    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        recorder,
        metrics,
        rollout,
    });
    let controller = async {
        // Plans made from half-filled caches would see targets as missing.
        if pods.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err() {
            return;
        }
        tracing::info!("caches synced; reconciling RolloutJobs");
        Controller::new(jobs_api, watcher::Config::default())
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| futures::future::ready(()))
            .await;
    };
    tokio::select! {
        () = controller => {},
        () = pod_cache => tracing::warn!("pod cache ended"),
        () = node_cache => tracing::warn!("node cache ended"),
        () = shutdown.cancelled() => {},
    }
}

/// Keep what the plan reads; the rest of a pod (managed fields, volumes, env) is dropped.
fn strip_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        spec.init_containers = None;
        spec.tolerations = None;
        for c in &mut spec.containers {
            c.env = None;
            c.env_from = None;
            c.volume_mounts = None;
            c.command = None;
            c.args = None;
            c.liveness_probe = None;
            c.readiness_probe = None;
            c.startup_probe = None;
            c.resources = None;
            c.ports = None;
        }
    }
}

/// A node's labels and conditions are all the plan needs (its image list can be kilobytes).
fn strip_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.spec = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.node_info = None;
        status.addresses = None;
        status.capacity = None;
        status.allocatable = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

fn error_policy(_job: Arc<RolloutJob>, error: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(%error, "reconcile failed");
    ctx.metrics.reconcile_failed(error);
    Requeue::requeue(Duration::from_secs(5))
}

/// The longest one reconcile may take. The client has no read timeout (watches stream for
/// minutes), so a request the API server never answers would otherwise stall the job for good.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

#[tracing::instrument(skip_all, fields(namespace = job.namespace(), name = job.name_any()))]
async fn reconcile(job: Arc<RolloutJob>, ctx: Arc<Context>) -> Result<Requeue> {
    let _timer = ctx.metrics.reconcile_started();
    let ns = job.namespace().ok_or(Error::MissingField("namespace"))?;
    let jobs: Api<RolloutJob> = Api::namespaced(ctx.client.clone(), &ns);
    let work = finalizer(&jobs, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(&job, &ctx).await,
            Finalizer::Cleanup(job) => cleanup(&job, &ctx).await,
        }
    });
    match tokio::time::timeout(RECONCILE_TIMEOUT, work).await {
        Ok(done) => done.map_err(|e| Error::Finalizer(Box::new(e))),
        Err(_) => Err(Error::Timeout(RECONCILE_TIMEOUT)),
    }
}

/// A label selector as the API's query string.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

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

async fn apply(cached: &RolloutJob, ctx: &Context) -> Result<Requeue> {
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

/// The workloads of `kind` in the namespace (fresh from the API server: few objects).
async fn list_workloads(
    ctx: &Context,
    ns: &str,
    kind: WorkloadKind,
    params: &ListParams,
) -> Result<Vec<workload::Object>> {
    let client = ctx.client.clone();
    Ok(match kind {
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client, ns)
            .list(params)
            .await?
            .items
            .into_iter()
            .map(workload::Object::DaemonSet)
            .collect(),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client, ns)
            .list(params)
            .await?
            .items
            .into_iter()
            .map(workload::Object::StatefulSet)
            .collect(),
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client, ns)
            .list(params)
            .await?
            .items
            .into_iter()
            .map(workload::Object::Deployment)
            .collect(),
    })
}

/// Strategic-merge patches a workload; returns it as the API server stored it.
async fn patch_workload(
    ctx: &Context,
    ns: &str,
    w: &workload::Object,
    patch: &serde_json::Value,
) -> Result<workload::Object> {
    let client = ctx.client.clone();
    let name = w.name();
    let patch = Patch::Strategic(patch);
    Ok(match w {
        workload::Object::DaemonSet(_) => workload::Object::DaemonSet(
            Api::<DaemonSet>::namespaced(client, ns)
                .patch(&name, &manager(), &patch)
                .await?,
        ),
        workload::Object::StatefulSet(_) => workload::Object::StatefulSet(
            Api::<StatefulSet>::namespaced(client, ns)
                .patch(&name, &manager(), &patch)
                .await?,
        ),
        workload::Object::Deployment(_) => workload::Object::Deployment(
            Api::<Deployment>::namespaced(client, ns)
                .patch(&name, &manager(), &patch)
                .await?,
        ),
    })
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

/// Gives every workload this job holds back — restored when `finished`, frozen as it is when
/// aborted — and deletes the job's pre-pull pods.
async fn release(
    ctx: &Context,
    ns: &str,
    kind: WorkloadKind,
    uid: &str,
    finished: bool,
) -> Result<()> {
    let pods: Vec<Arc<Pod>> = namespace_pods(ctx, ns);
    for w in list_workloads(ctx, ns, kind, &ListParams::default()).await? {
        let patch = if finished {
            // Pods left on the old image keep the workload held, whatever way the job ended.
            workload::release_patch(&w, uid, workload::pods_behind(&w, &pods).len())
        } else {
            workload::freeze_patch(&w, uid)
        };
        if let Some(patch) = patch {
            patch_workload(ctx, ns, &w, &patch).await?;
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let _ = pods
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{}={uid}", keys::JOB_UID_LABEL)),
        )
        .await?;
    Ok(())
}

async fn cleanup(job: &RolloutJob, ctx: &Context) -> Result<Requeue> {
    let ns = job.namespace().ok_or(Error::MissingField("namespace"))?;
    let uid = job.uid().ok_or(Error::MissingField("uid"))?;
    // Deleted mid-rollout: leave the workload as it is (like an abort).
    let finished = job
        .status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, RolloutPhase::Completed | RolloutPhase::RolledBack));
    release(ctx, &ns, job.spec.target.kind, &uid, finished).await?;
    forget(ctx, &ns, &job.name_any());
    Ok(Requeue::await_change())
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

/// The cached pods of one namespace.
fn namespace_pods(ctx: &Context, ns: &str) -> Vec<Arc<Pod>> {
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .collect()
}

fn manager() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR.into()),
        ..PatchParams::default()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_render_as_the_api_expects() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "toll"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(selector_string(&s), "app=toll,tier in (a,b),!canary");
    }
}
