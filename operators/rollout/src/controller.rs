//! The RolloutJob controller: caches, what wakes a job, the finalizer, and releasing
//! workloads; one reconcile step by step is [`crate::reconcile`].
//!
//! Pods are read from an indexed cache ([`PodIndex`]: by workload, by job, by node) and nodes
//! from a reflector, both decoded into the few fields the plan reads ([`crate::cached`]: a
//! stripped `Pod` took ~12 KiB), and a reconcile reads only its own pods; workloads are listed
//! per reconcile (few objects). Reconciles are driven by watches: a pod or node event wakes the jobs it concerns
//! ([`crate::wake`]), at most once a second per job; the clock wakes a job only at the next
//! deadline its plan knows (timeouts, minReadySeconds, offline waits, step pauses), at least
//! every [`crate::reconcile::CLOCK_CEILING`].

use edgefleet_api::rollout::{RolloutJob, RolloutPhase, WorkloadKind, keys};
use edgefleet_kit::ReconcileMetrics;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

use crate::cached::{CachedNode, CachedPod};
use crate::error::{Error, Result};
use crate::index::{Change, PodIndex, WorkloadKey};
use crate::metrics::RolloutMetrics;
use crate::report::forget;
use crate::wake::{Interest, node_moved, throttled};
use crate::workload;

/// Field manager and event reporter of this operator.
pub const OPERATOR: &str = "edgefleet-rollout";
/// Held while the job may have changed a workload: deletion restores it first.
pub const FINALIZER: &str = "edgefleet.io/rollout-cleanup";

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub pods: PodIndex,
    pub nodes: Store<CachedNode>,
    /// Which jobs hold or wait for which workloads: maps cache events to jobs.
    pub interest: Interest,
    pub recorder: Recorder,
    pub metrics: ReconcileMetrics,
    pub rollout: RolloutMetrics,
    /// Test-only stall points ([`crate::stall`]).
    pub stall: crate::stall::Stall,
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
    let pods_api: Api<CachedPod> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let jobs_api: Api<RolloutJob> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (interest, wakes) = Interest::new();
    let pods = PodIndex::default();
    let scope = namespace.clone();
    let (pod_index, pod_interest) = (pods.clone(), interest.clone());
    let pod_cache = watcher(pods_api, watcher::Config::default())
        .default_backoff()
        .modify(CachedPod::trim)
        .for_each(move |ev| {
            match ev {
                Ok(ev) => match pod_index.apply(ev) {
                    Change::Pod(old, new) => {
                        pod_interest.pod_changed(old.as_deref(), new.as_deref());
                    }
                    Change::Relisted => pod_interest.everyone(),
                    Change::None => {}
                },
                // Retried with back-off; said, since a namespace outside the RBAC (a
                // `--watch-namespace` the chart's `watchNamespaces` does not cover) fails
                // here for good and its RolloutJobs are never reconciled.
                Err(error) => {
                    tracing::warn!(namespace = ?scope, %error, "pod watch failed; retrying");
                }
            }
            futures::future::ready(())
        });
    let (nodes, node_writer) = reflector::store();
    let (node_store, node_pods, node_interest) = (nodes.clone(), pods.clone(), interest.clone());
    let node_cache = watcher(
        Api::<CachedNode>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(CachedNode::trim)
    // Before the store takes the event: compare with what it held. Heartbeats (most node
    // updates) change neither readiness nor labels and wake nobody.
    .inspect_ok(move |ev| match ev {
        watcher::Event::Apply(n) => {
            let old = node_store.get(&ObjectRef::from_obj(n));
            if node_moved(old.as_deref(), n) {
                node_interest.node_changed(&node_pods, &n.name_any());
            }
        }
        watcher::Event::Delete(n) => node_interest.node_changed(&node_pods, &n.name_any()),
        watcher::Event::InitDone => node_interest.everyone(),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    })
    .reflect(node_writer)
    .for_each(|_| futures::future::ready(()));

    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        interest,
        recorder,
        metrics,
        rollout,
        stall: crate::stall::Stall::from_env(),
    });
    let controller = async {
        // Plans made from half-filled caches would see targets as missing.
        pods.wait_until_ready().await;
        if nodes.wait_until_ready().await.is_err() {
            return;
        }
        tracing::info!(pods = pods.len(), "caches synced; reconciling RolloutJobs");
        Controller::new(jobs_api, watcher::Config::default())
            .reconcile_on(throttled(wakes))
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
            Finalizer::Apply(job) => crate::reconcile::apply(&job, &ctx).await,
            Finalizer::Cleanup(job) => cleanup(&job, &ctx).await,
        }
    });
    match tokio::time::timeout(RECONCILE_TIMEOUT, work).await {
        Ok(done) => done.map_err(|e| Error::Finalizer(Box::new(e))),
        Err(_) => Err(Error::Timeout(RECONCILE_TIMEOUT)),
    }
}

/// A label selector as the API's query string, or why it cannot be one. Anything not
/// understood is an error, never rendered: a selector must never select more than it says (an
/// unknown operator once rendered as `!key`, selecting every workload without the label).
pub fn selector_string(selector: &LabelSelector) -> std::result::Result<String, String> {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let key = &e.key;
        parts.push(match (e.operator.as_str(), values.is_empty()) {
            ("In", false) => format!("{key} in ({})", values.join(",")),
            ("NotIn", false) => format!("{key} notin ({})", values.join(",")),
            ("Exists", true) => key.clone(),
            ("DoesNotExist", true) => format!("!{key}"),
            ("In" | "NotIn", true) => {
                return Err(format!("operator {} on {key:?} needs values", e.operator));
            }
            ("Exists" | "DoesNotExist", false) => {
                return Err(format!(
                    "operator {} on {key:?} takes no values",
                    e.operator
                ));
            }
            (other, _) => {
                return Err(format!(
                    "unknown operator {other:?} on {key:?} (one of In, NotIn, Exists, DoesNotExist)"
                ));
            }
        });
    }
    if parts.is_empty() {
        return Err("an empty selector would select every workload".into());
    }
    Ok(parts.join(","))
}

/// A workload as the API server holds it now.
pub(crate) async fn get_workload(
    ctx: &Context,
    ns: &str,
    w: &workload::Object,
) -> Result<workload::Object> {
    let client = ctx.client.clone();
    let name = w.name();
    Ok(match w {
        workload::Object::DaemonSet(_) => {
            workload::Object::DaemonSet(Api::<DaemonSet>::namespaced(client, ns).get(&name).await?)
        }
        workload::Object::StatefulSet(_) => workload::Object::StatefulSet(
            Api::<StatefulSet>::namespaced(client, ns)
                .get(&name)
                .await?,
        ),
        workload::Object::Deployment(_) => workload::Object::Deployment(
            Api::<Deployment>::namespaced(client, ns).get(&name).await?,
        ),
    })
}

/// The workloads of `kind` in the namespace (fresh from the API server: few objects).
pub(crate) async fn list_workloads(
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
pub(crate) async fn patch_workload(
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

/// Gives every workload this job holds back — restored when `finished`, frozen as it is when
/// aborted — and deletes the job's pre-pull pods; wakes the jobs waiting for those workloads.
/// Idempotent: a workload no longer locked by the job is left alone.
pub(crate) async fn release(
    ctx: &Context,
    ns: &str,
    kind: WorkloadKind,
    uid: &str,
    finished: bool,
) -> Result<()> {
    let mut released = Vec::new();
    for w in list_workloads(ctx, ns, kind, &ListParams::default()).await? {
        let patch = if finished {
            // Pods left on the old image keep the workload held, whatever way the job ended.
            let pods = workload_pods(ctx, ns, &w);
            workload::release_patch(&w, uid, workload::pods_behind(&w, &pods).len())
        } else {
            workload::freeze_patch(&w, uid)
        };
        if let Some(patch) = patch {
            patch_workload(ctx, ns, &w, &patch).await?;
            released.push(workload_key(ns, &w));
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let _ = pods
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{}={uid}", keys::JOB_UID_LABEL)),
        )
        .await?;
    ctx.interest.released(&released);
    Ok(())
}

/// Does a job ending in `phase` restore its workloads (else it leaves them as they are)?
pub(crate) fn restores(phase: RolloutPhase) -> bool {
    matches!(phase, RolloutPhase::Completed | RolloutPhase::RolledBack)
}

async fn cleanup(job: &RolloutJob, ctx: &Context) -> Result<Requeue> {
    let ns = job.namespace().ok_or(Error::MissingField("namespace"))?;
    let uid = job.uid().ok_or(Error::MissingField("uid"))?;
    // Deleted mid-rollout: leave the workload as it is (like an abort).
    let finished = job.status.as_ref().is_some_and(|s| restores(s.phase));
    release(ctx, &ns, job.spec.target.kind, &uid, finished).await?;
    ctx.interest.forget(&ObjectRef::from_obj(job));
    forget(ctx, &ns, &job.name_any());
    Ok(Requeue::await_change())
}

/// How pods and the wake index name a workload.
pub(crate) fn workload_key(ns: &str, w: &workload::Object) -> WorkloadKey {
    WorkloadKey::new(ns, &format!("{:?}", w.kind()), &w.name())
}

/// The cached pods a workload controls (from the index: no scan of the cluster's pods).
pub(crate) fn workload_pods(ctx: &Context, ns: &str, w: &workload::Object) -> Vec<Arc<CachedPod>> {
    ctx.pods.of_workload(&workload_key(ns, w))
}

fn manager() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR.into()),
        ..PatchParams::default()
    }
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
        assert_eq!(
            selector_string(&s).unwrap(),
            "app=toll,tier in (a,b),!canary"
        );
    }

    /// An operator not understood is an error, never a wider selector (`Exist` once rendered
    /// as `!app`: every workload without the label).
    #[test]
    fn a_selector_that_is_not_understood_never_widens() {
        let expr = |op: &str, values: serde_json::Value| -> LabelSelector {
            serde_json::from_value(serde_json::json!({
                "matchExpressions": [{"key": "app", "operator": op, "values": values}]
            }))
            .unwrap()
        };
        for (op, values, want) in [
            (
                "Exist",
                serde_json::json!(null),
                "unknown operator \"Exist\"",
            ),
            ("in", serde_json::json!(["a"]), "unknown operator \"in\""),
            ("", serde_json::json!(null), "unknown operator"),
            ("In", serde_json::json!([]), "needs values"),
            ("NotIn", serde_json::json!(null), "needs values"),
            ("Exists", serde_json::json!(["a"]), "takes no values"),
        ] {
            let err = selector_string(&expr(op, values)).unwrap_err();
            assert!(err.contains(want), "{op}: {err}");
        }
        assert!(selector_string(&LabelSelector::default()).is_err());
        assert_eq!(
            selector_string(&expr("Exists", serde_json::json!(null))).unwrap(),
            "app"
        );
    }
}
