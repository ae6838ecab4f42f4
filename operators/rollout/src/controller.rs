//! The RolloutJob controller: caches, the finalizer, and releasing workloads; one reconcile
//! step by step is [`crate::reconcile`].
//!
//! Pods and nodes are read from reflector caches (stripped to the fields the plan reads, so
//! memory stays flat at 100,000 pods); workloads are listed per reconcile (few objects). Active
//! jobs are requeued every couple of seconds: progress is driven by the clock (timeouts,
//! minReadySeconds) as much as by events.

use edgefleet_api::rollout::{RolloutJob, RolloutPhase, WorkloadKind, keys};
use edgefleet_kit::ReconcileMetrics;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::metrics::RolloutMetrics;
use crate::report::forget;
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
    let scope = namespace.clone();
    let pod_cache = watcher(pods_api, watcher::Config::default())
        .default_backoff()
        .modify(strip_pod)
        .reflect(pod_writer)
        .for_each(move |ev| {
            // Retried with back-off; said, since a namespace outside the RBAC (a
            // `--watch-namespace` the chart's `watchNamespaces` does not cover) fails here for
            // good and its RolloutJobs are never reconciled.
            if let Err(error) = ev {
                tracing::warn!(namespace = ?scope, %error, "pod watch failed; retrying");
            }
            futures::future::ready(())
        });
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
/// aborted — and deletes the job's pre-pull pods.
pub(crate) async fn release(
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

/// The cached pods of one namespace.
pub(crate) fn namespace_pods(ctx: &Context, ns: &str) -> Vec<Arc<Pod>> {
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
