//! Apply step: carry out a plan's actions against the API server. Every action is idempotent
//! (an existing pre-pull pod, an already deleted pod, an annotation already set are all fine),
//! so a restart that repeats an action changes nothing.

use edgefleet_api::rollout::{RolloutJob, WorkloadKind, keys};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::metrics::RolloutMetrics;
use crate::plan::{Action, Direction};
use crate::prepull::{self, PrePullRequest};
use crate::snapshot::{batch_annotation, outcome_annotation};
use crate::workload;

/// Most API calls in flight for one job's actions.
const CONCURRENCY: usize = 16;

/// What the actions need beside themselves.
pub struct Actor<'a> {
    pub pods: Api<Pod>,
    /// The job's workload kind: Deployment targets keep their marks on the Deployment.
    pub kind: WorkloadKind,
    pub deployments: Api<Deployment>,
    pub statefulsets: Api<StatefulSet>,
    /// The target container per workload name.
    pub containers: HashMap<String, String>,
    pub job: &'a RolloutJob,
    pub direction: &'a Direction,
    pub pull_secrets: Vec<LocalObjectReference>,
    pub metrics: &'a RolloutMetrics,
    pub field_manager: &'a str,
}

impl Actor<'_> {
    /// Runs the actions, a few at a time; the first error is returned after all have run.
    pub async fn run(&self, actions: Vec<Action>) -> Result<()> {
        let results: Vec<Result<()>> = futures::stream::iter(actions)
            .map(|a| self.act(a))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn act(&self, action: Action) -> Result<()> {
        let uid = self.job.uid().unwrap_or_default();
        let now = Timestamp::now();
        match action {
            Action::Choose { pod, batch } => {
                self.mark(
                    &pod,
                    keys::TARGET_BATCH_ANNOTATION,
                    &batch_annotation(&uid, &batch, now),
                )
                .await
            }
            Action::PrePull {
                node,
                slot,
                image,
                batch,
                attempt,
                swap,
            } => {
                let mut pod = prepull::build_pod(&PrePullRequest {
                    job_name: &self.job.name_any(),
                    job_uid: &uid,
                    namespace: &self.job.namespace().unwrap_or_default(),
                    node: &node,
                    slot: slot.as_deref(),
                    image: &image,
                    batch: &batch,
                    attempt,
                    timeout_seconds: self.job.spec.pre_pull.timeout_seconds,
                    pull_secrets: self.pull_secrets.clone(),
                });
                if swap {
                    pod.metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(keys::SWAPPED_AT_ANNOTATION.into(), now.to_string());
                }
                match self.pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => Ok(()),
                    // Created before (a repeated action): fine only if it is this very pull.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        match self.pods.get_opt(&name).await? {
                            Some(existing) if prepull::is_same_prepull(&existing, &pod) => Ok(()),
                            // Deleted in between: the next reconcile creates it again.
                            None => Ok(()),
                            Some(_) => Err(Error::PrePullNameTaken(name)),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Action::Swap {
                pod,
                pod_uid,
                prepull,
                ..
            } => {
                if let Some((pp, created)) = &prepull {
                    // Recorded before the delete so a restart in between still knows the swap
                    // was started. The plan only asks for the mark when the pre-pull pod has
                    // none yet: no read needed.
                    self.metrics
                        .prepull_duration
                        .observe(now.duration_since(*created).as_secs_f64());
                    self.annotate(pp, keys::SWAPPED_AT_ANNOTATION, &now.to_string())
                        .await?;
                }
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(pod_uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                ignore_gone(self.pods.delete(&pod, &params).await.map(|_| ()))?;
                if let Some((pp, _)) = &prepull {
                    // The interruption runs from the old pod's delete (as a pod watch sees it),
                    // not from the mark before it: the swap time is moved to when the API
                    // server accepted the delete.
                    self.annotate(
                        pp,
                        keys::SWAPPED_AT_ANNOTATION,
                        &Timestamp::now().to_string(),
                    )
                    .await?;
                }
                Ok(())
            }
            Action::LowerPartition {
                statefulset,
                from,
                to,
                prepull,
            } => {
                if let Some((pp, created)) = prepull {
                    // Recorded before the partition moves, as for a pod delete.
                    self.metrics
                        .prepull_duration
                        .observe(now.duration_since(created).as_secs_f64());
                    self.annotate(&pp, keys::SWAPPED_AT_ANNOTATION, &now.to_string())
                        .await?;
                }
                if from <= to {
                    return Ok(());
                }
                let patch = workload::lower_partition_patch(from, to);
                let patch: json_patch::Patch = serde_json::from_value(patch)?;
                self.statefulsets
                    .patch(&statefulset, &self.params(), &Patch::Json::<()>(patch))
                    .await?;
                Ok(())
            }
            Action::SetImage { deployment, image } => {
                let Some(container) = self.containers.get(&deployment) else {
                    return Ok(());
                };
                let patch = workload::set_image_patch(container, &image, &format!("{uid}@{now}"));
                self.deployments
                    .patch(&deployment, &self.params(), &Patch::Strategic(&patch))
                    .await?;
                Ok(())
            }
            Action::Record { pod, outcome } => {
                self.mark(
                    &pod,
                    keys::TARGET_OUTCOME_ANNOTATION,
                    &outcome_annotation(&uid, self.direction, &outcome),
                )
                .await
            }
            Action::RecordOnPrePull { prepull, outcome } => {
                self.annotate(
                    &prepull,
                    keys::TARGET_OUTCOME_ANNOTATION,
                    &outcome_annotation(&uid, self.direction, &outcome),
                )
                .await
            }
            Action::Finish {
                pod,
                batch,
                prepull,
                interruption,
            } => {
                if !batch.is_empty() {
                    // The interruption is observed once the pod is read unmarked, before the
                    // mark is written: a mark that conflicts (the kubelet's status) or lands
                    // without its answer (a reconcile cut short) must not lose the swap. The
                    // mark on the cluster still says "recorded" to every later reconcile, and
                    // the process-local set keeps a repeat before the mark lands from counting
                    // twice.
                    let swap = format!("{}/{prepull}", self.job.namespace().unwrap_or_default());
                    let observe = || {
                        if let Some(d) = interruption {
                            self.metrics.observe_interruption_once(&swap, d);
                        }
                    };
                    let marked = self
                        .mark_once(
                            &pod,
                            keys::TARGET_BATCH_ANNOTATION,
                            &batch_annotation(&uid, &batch, now),
                            observe,
                        )
                        .await?;
                    match marked {
                        // Written in between (the kubelet's status): the pre-pull pod stays, so
                        // the next reconcile finishes the target again.
                        Mark::Conflict => return Ok(()),
                        Mark::Set | Mark::Already => self.metrics.interruption_recorded(&swap),
                    }
                }
                ignore_gone(
                    self.pods
                        .delete(&prepull, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )
            }
            Action::Reopen { pod } => {
                let patch =
                    json!({"metadata": {"annotations": {keys::TARGET_OUTCOME_ANNOTATION: null}}});
                ignore_gone(
                    self.pods
                        .patch(&pod, &self.params(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ()),
                )
            }
            Action::DeletePrePull { name } => ignore_gone(
                self.pods
                    .delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            ),
        }
    }

    fn params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(self.field_manager.to_string()),
            ..PatchParams::default()
        }
    }

    /// A target's mark: on its pod, or on the Deployment for Deployment targets.
    async fn mark(&self, target: &str, key: &str, value: &str) -> Result<()> {
        if self.kind != WorkloadKind::Deployment {
            return self.annotate(target, key, value).await;
        }
        let patch = json!({"metadata": {"annotations": {key: value}}});
        ignore_gone(
            self.deployments
                .patch(target, &self.params(), &Patch::Merge(&patch))
                .await
                .map(|_| ()),
        )
    }

    /// Sets `key` on a pod that does not carry it yet, guarded by the version read (a 409
    /// when someone wrote in between).
    async fn mark_once(
        &self,
        pod: &str,
        key: &str,
        value: &str,
        unmarked: impl FnOnce(),
    ) -> Result<Mark> {
        let Some(current) = self.pods.get_opt(pod).await? else {
            return Ok(Mark::Already);
        };
        if ours_for(&current, key, self.job) {
            return Ok(Mark::Already);
        }
        unmarked();
        let patch = json!({"metadata": {
            "resourceVersion": current.resource_version(),
            "annotations": {key: value},
        }});
        match self
            .pods
            .patch(pod, &self.params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(Mark::Set),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(Mark::Already),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Mark::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    async fn annotate(&self, pod: &str, key: &str, value: &str) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        ignore_gone(
            self.pods
                .patch(pod, &self.params(), &Patch::Merge(&patch))
                .await
                .map(|_| ()),
        )
    }
}

/// What [`Actor::mark_once`] did.
enum Mark {
    /// This call set the mark.
    Set,
    /// The mark was there already (or the pod is gone): nothing to do.
    Already,
    /// The pod changed between the read and the write: try again later.
    Conflict,
}

/// Whether a pod's `key` annotation is this job's (`<uid>/...`).
fn ours_for(pod: &Pod, key: &str, job: &RolloutJob) -> bool {
    let uid = job.uid().unwrap_or_default();
    pod.annotations()
        .get(key)
        .is_some_and(|v| v.starts_with(&format!("{uid}/")))
}

/// A pod that is already gone is what a delete wanted, and an annotation on it no longer matters.
fn ignore_gone(result: kube::Result<()>) -> Result<()> {
    match result {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        other => other.map_err(Into::into),
    }
}
