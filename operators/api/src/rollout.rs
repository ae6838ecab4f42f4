//! `RolloutJob` (edgefleet.io/v1alpha1): a batched rollout of a new image across many edge
//! workloads, pulling the image on each node *before* the old pod is swapped.
//!
//! The status stays small at any scale: per-target progress lives on the cluster (labels and
//! annotations on pods and workloads), and the status holds counts plus bounded lists.

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Labels and annotations the rollout operator keeps per-target state in. Part of the API: the
/// state of a rollout at 100,000 targets lives on the cluster, not in one object, and tools
/// (the kubectl plugin, dashboards) read it from there.
pub mod keys {
    /// On a pre-pull pod: `"true"`.
    pub const PREPULL_LABEL: &str = "edgefleet.io/prepull";
    /// On a pre-pull pod: the UID of the RolloutJob it pulls for.
    pub const JOB_UID_LABEL: &str = "edgefleet.io/rollout-job-uid";
    /// On a pre-pull pod: the batch key (`3`, or `rb-3` for a rollback batch).
    pub const BATCH_LABEL: &str = "edgefleet.io/rollout-batch";
    /// On a pre-pull pod: the node it pulls on.
    pub const NODE_ANNOTATION: &str = "edgefleet.io/node";
    /// On a pre-pull pod: the 1-based attempt.
    pub const ATTEMPT_ANNOTATION: &str = "edgefleet.io/attempt";
    /// On a pre-pull pod: RFC 3339 time the old pod was deleted, or (StatefulSet) the partition
    /// lowered to its ordinal: the swap started. On a Deployment: `<job uid>@<RFC 3339>`, the
    /// time the job patched its image.
    pub const SWAPPED_AT_ANNOTATION: &str = "edgefleet.io/swapped-at";
    /// On a pre-pull pod of a StatefulSet or Deployment target: the target slot it pulls for
    /// (`StatefulSet/<name>/<ordinal>`, `Deployment/<name>@<node>`); absent for DaemonSets,
    /// whose slot is the node.
    pub const TARGET_SLOT_ANNOTATION: &str = "edgefleet.io/rollout-target";
    /// On a target pod (on the Deployment itself for Deployment targets): `<job uid>/<batch
    /// key>@<RFC 3339>`, the batch it was chosen for.
    pub const TARGET_BATCH_ANNOTATION: &str = "edgefleet.io/rollout-batch";
    /// On a target pod (on the Deployment itself for Deployment targets): `<job uid>/<Reason>:
    /// <message>` once it failed or was skipped.
    pub const TARGET_OUTCOME_ANNOTATION: &str = "edgefleet.io/rollout-outcome";
    /// On a workload: `<job name>/<job uid>` of the RolloutJob rolling it out (one at a time).
    pub const WORKLOAD_LOCK_ANNOTATION: &str = "edgefleet.io/rollout-job";
    /// On a workload: the image its container had before the job (for rollback).
    pub const PREVIOUS_IMAGE_ANNOTATION: &str = "edgefleet.io/previous-image";
    /// On a workload: the image the job last set in its template (a different template image
    /// means someone edited it by hand).
    pub const ROLLOUT_IMAGE_ANNOTATION: &str = "edgefleet.io/rollout-image";
    /// On a DaemonSet or StatefulSet: its update strategy (JSON) before the job switched it to
    /// OnDelete (DaemonSet) or to a RollingUpdate partition (StatefulSet).
    pub const ORIGINAL_STRATEGY_ANNOTATION: &str = "edgefleet.io/original-update-strategy";
}

/// Most batch summaries kept in status (the current batch and the ones before it).
pub const MAX_BATCH_SUMMARIES: usize = 20;
/// Most recent failures kept in status.
pub const MAX_RECENT_FAILURES: usize = 20;

/// CEL for a positive count or a percentage from 1% to 100%.
const POSITIVE_INT_OR_PERCENT: &str =
    "type(self) == int ? self > 0 : self.matches('^(100|[1-9][0-9]?)%$')";
/// CEL for a count ≥ 0 or a percentage from 0% to 100%.
const INT_OR_PERCENT: &str = "type(self) == int ? self >= 0 : self.matches('^(100|[1-9]?[0-9])%$')";
/// An OCI image reference: `[registry[:port]/]path[:tag][@digest]`, as the distribution
/// reference grammar defines it (lower-case path components, tag ≤ 128 chars, sha256 digest).
const IMAGE_REFERENCE: &str = r"self.matches('^(([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)(\\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')";

/// A RolloutJob rolls `image` out to the workloads `target` selects, batch by batch. On each
/// node of a batch the new image is pre-pulled first; only a node whose pull succeeded has its
/// pod swapped, and the swap is verified before the next batch starts.
// kube's `printcolumn(...)` repeats `type_ =` by design; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "edgefleet.io",
    version = "v1alpha1",
    kind = "RolloutJob",
    plural = "rolloutjobs",
    shortname = "rj",
    shortname = "rjob",
    category = "edgefleet",
    namespaced,
    status = "RolloutJobStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Batch",
        type_ = "string",
        json_path = ".status.progress",
        description = "current batch / total batches"
    ),
    printcolumn(
        name = "Targets",
        type_ = "integer",
        json_path = ".status.counts.targets"
    ),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.counts.updated"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.counts.failed"
    ),
    printcolumn(
        name = "Behind",
        type_ = "integer",
        json_path = ".status.behind",
        description = "targets not on the workload's template image; condition NodesBehind says how to finish"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(oldSelf.abort) && oldSelf.abort) || (has(self.abort) && self.abort)").message("spec.abort cannot be unset once set"))]
#[x_kube(validation = Rule::new("!(has(oldSelf.rollback) && oldSelf.rollback) || (has(self.rollback) && self.rollback)").message("spec.rollback cannot be unset once set"))]
pub struct RolloutJobSpec {
    /// The workloads to update. Immutable: start a new RolloutJob for other workloads.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.target is immutable; create a new RolloutJob"))]
    pub target: RolloutTarget,

    /// The new image for the target container, e.g. `registry.example/toll/gantry:2.4.1`.
    /// Immutable: a different image is a different rollout.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.image is immutable; create a new RolloutJob"))]
    #[x_kube(validation = Rule::new(IMAGE_REFERENCE).message("spec.image must be a valid image reference such as registry.example/app:1.2.3 (lower-case repository, optional :tag and @sha256:digest)"))]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Only pods on nodes with all these labels are updated (e.g. one region). Empty: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// How targets are cut into batches.
    #[serde(default)]
    pub batches: BatchPolicy,

    /// Pull the new image on each node before swapping its pod.
    #[serde(default)]
    pub pre_pull: PrePullPolicy,

    /// What counts as a successful swap.
    #[serde(default)]
    pub verify: VerifyPolicy,

    /// How many failures are tolerated, and what happens beyond that.
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// What to do with targets on NotReady nodes.
    #[serde(default)]
    pub offline_nodes: OfflineNodePolicy,

    /// Catching up targets skipped because their node was offline, once it returns.
    #[serde(default)]
    pub catch_up: CatchUpPolicy,

    /// Pause between actions: work in flight finishes, nothing new starts. Set back to false
    /// (or remove) to resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// Releases step pauses that wait for a person (`pause: {}`): the rollout goes on past the
    /// pause after batch N once this is at least N. GitOps-friendly; `kubectl edgefleet rollout
    /// resume` sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub approved_batch: Option<i32>,

    /// Stop the rollout for good, leaving updated targets on the new image. Cannot be undone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,

    /// Restore the previous image on every updated target, batch by batch, with the same
    /// pre-pull discipline. Cannot be undone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
}

/// The kind of workload a RolloutJob updates.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    DaemonSet,
    Deployment,
    StatefulSet,
}

/// Which workloads, and which container in them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    /// DaemonSet, Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// Selects workloads of that kind in the RolloutJob's namespace by their labels.
    #[schemars(schema_with = "workload_selector_schema")]
    pub selector: LabelSelector,
    /// The container to update; may be omitted when the pod template has one container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
}

/// How targets are cut into batches. Either `size` (every batch the same) or explicit `steps`.
/// With neither, each batch is 10% of the targets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.steps) || !has(self.size)").message("spec.batches: set either size or steps, not both"))]
pub struct BatchPolicy {
    /// Targets per batch: a count (`50`) or a percentage of all targets (`"10%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "batch_size_schema")]
    pub size: Option<IntOrString>,

    /// Explicit batches, in order. A target not covered by the steps is updated in a last batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub steps: Option<Vec<BatchStep>>,

    /// A node label (e.g. `topology.edgefleet.io/station`): a batch never splits a group of
    /// nodes sharing its value, and groups are taken in the order of their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub group_by: Option<String>,

    /// Most targets of one batch swapped at the same time: a count or a percentage of the batch.
    /// Default: the whole batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "max_unavailable_schema")]
    pub max_unavailable: Option<IntOrString>,
}

/// One explicit batch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchStep {
    /// Targets in this batch: a count or a percentage of all targets.
    #[schemars(schema_with = "step_size_schema")]
    pub size: IntOrString,
    /// Pause after this batch is verified. Absent: go on at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<StepPause>,
}

/// A pause after a batch: for `seconds`, or (no `seconds`) until `spec.approvedBatch` reaches
/// the batch's number.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepPause {
    /// How long to pause; absent means until resumed by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub seconds: Option<i64>,
}

/// Image pre-pull before each swap.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrePullPolicy {
    /// Pull the image on the node before swapping its pod. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Give up on one node's pull after this long (one attempt).
    #[serde(default = "default_pull_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
    /// Most pulls running at once across the job: protects slow links and registries.
    #[serde(default = "default_pull_parallelism")]
    #[schemars(range(min = 1, max = 10000))]
    pub parallelism: i32,
    /// Extra attempts after a failed or timed-out pull before the node counts as failed.
    #[serde(default = "default_pull_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
    /// Secrets (in the job's namespace) used to pull the image. Default: the target pod
    /// template's own imagePullSecrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

impl Default for PrePullPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout_seconds: default_pull_timeout(),
            parallelism: default_pull_parallelism(),
            retries: default_pull_retries(),
            image_pull_secrets: None,
        }
    }
}

/// When a swapped target counts as done.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyPolicy {
    /// The new pod must be Ready within this long after the old one is gone.
    #[serde(default = "default_ready_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub ready_timeout_seconds: i64,
    /// ... and stay Ready this long.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: i64,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {
            ready_timeout_seconds: default_ready_timeout(),
            min_ready_seconds: 0,
        }
    }
}

/// What happens when failures exceed the tolerance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailureAction {
    /// Stop starting new work and wait for a person (`spec.paused: false` resumes).
    #[default]
    Pause,
    /// Stop for good; updated targets keep the new image.
    Abort,
    /// Restore the previous image on every updated target.
    Rollback,
}

/// The failure budget of the whole job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Failed targets (pull failed, timed out, not Ready) tolerated: a count or a percentage of
    /// all targets. Default 0: the first failure triggers the action.
    #[serde(default = "default_tolerance")]
    #[schemars(schema_with = "tolerance_schema")]
    pub tolerance: IntOrString,
    /// Pause, Abort or Rollback once failures exceed the tolerance.
    #[serde(default)]
    pub action: FailureAction,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            tolerance: default_tolerance(),
            action: FailureAction::Pause,
        }
    }
}

/// What to do with a target whose node is NotReady when its batch comes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OfflineNodeAction {
    /// Leave it on the old image; count it as skipped and list it.
    #[default]
    Skip,
    /// Wait for the node (up to `waitSeconds`), catching it up before the job completes.
    Wait,
}

/// Handling of NotReady nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.waitSeconds) || self.action == 'Wait'").message("spec.offlineNodes.waitSeconds only applies with action Wait"))]
pub struct OfflineNodePolicy {
    /// Skip (default) or Wait.
    #[serde(default)]
    pub action: OfflineNodeAction,
    /// With Wait: how long a node may stay NotReady before it counts as failed. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub wait_seconds: Option<i64>,
}

/// Catching up nodes that come back: a target skipped (or failed) because its node was offline
/// is reopened when the node is Ready again, pre-pulled, then swapped, in a batch of its own.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CatchUpPolicy {
    /// How long after its last batch the job keeps waiting for offline nodes to return (it stays
    /// `Progressing` meanwhile). 0: end at once. Targets still offline after that stay on the old
    /// image, held (a DaemonSet stays `OnDelete`): condition `NodesBehind` says how to finish.
    /// Default 3600.
    #[serde(default = "default_catch_up_window")]
    #[schemars(range(min = 0, max = 604800))]
    pub window_seconds: i64,
}

impl Default for CatchUpPolicy {
    fn default() -> Self {
        Self {
            window_seconds: default_catch_up_window(),
        }
    }
}

/// Where a RolloutJob is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RolloutPhase {
    /// Accepted, not started (e.g. waiting for another job on the same workload).
    #[default]
    Pending,
    /// Batches are running.
    Progressing,
    /// Paused by `spec.paused`, a step pause or the failure budget.
    Paused,
    /// Restoring the previous image.
    RollingBack,
    /// Every target is on the new image (skipped ones excepted, and listed).
    Completed,
    /// Stopped by `spec.abort` or the failure budget.
    Aborted,
    /// Rollback finished.
    RolledBack,
    /// The job cannot run (e.g. invalid against the cluster); see conditions.
    Failed,
}

/// Target counts. A target is a (workload, node) pair for DaemonSets, one pod ordinal for
/// StatefulSets, and a whole Deployment for Deployments.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetCounts {
    pub targets: i64,
    pub pre_pulled: i64,
    pub updated: i64,
    pub ready: i64,
    pub failed: i64,
    pub skipped: i64,
}

/// Summary of one batch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    /// 1-based batch number.
    pub index: i32,
    /// The groupBy value(s) this batch covers, if grouping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub phase: String,
    #[serde(default)]
    pub counts: TargetCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
}

/// One failed or skipped target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetFailure {
    pub node: String,
    /// `<Kind>/<name>` of the workload.
    pub workload: String,
    /// Short CamelCase reason, e.g. PullFailed, PullTimeout, NotReady, NodeOffline.
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Observed state of a RolloutJob. Small at any scale: counts and bounded lists.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: RolloutPhase,
    /// Set while an ended job gives its workloads back: the phase it ends in once they are.
    /// Its figures are already final; `phase` and the `Complete` / `Failed` conditions turn
    /// only when the workloads are back in their controllers' hands (as a Kubernetes Job sets
    /// `Complete` only after its pods are cleaned up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending_phase: Option<RolloutPhase>,
    /// `current/total` batches, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// 1-based number of the batch in progress (0 before the first).
    #[serde(default)]
    pub current_batch: i32,
    #[serde(default)]
    pub total_batches: i32,
    #[serde(default)]
    pub counts: TargetCounts,
    /// The last batches, newest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub batches: Vec<BatchSummary>,
    /// The most recent failed or skipped targets, newest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub recent_failures: Vec<TargetFailure>,
    /// Targets whose pod is not on its workload's template image (not pulled, failed, skipped,
    /// offline). At the end of a job they are held: a DaemonSet stays `OnDelete`, a
    /// StatefulSet keeps its partition, so no controller swaps them without a pre-pull.
    #[serde(default)]
    pub behind: i64,
    /// One line saying what the job is doing or waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Progressing, Paused, Complete, Failed (Kubernetes condition shape).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// An int-or-string schema checked by a CEL rule. `maxLength` bounds the rule's cost (a
/// percentage is at most `100%`), which the API server estimates before accepting the CRD.
fn int_or_percent(rule: &str, message: &str, description: &str) -> schemars::Schema {
    schemars::json_schema!({
        "description": description,
        "x-kubernetes-int-or-string": true,
        "maxLength": 4,
        "x-kubernetes-validations": [{"rule": rule, "message": message}],
    })
}

fn batch_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    int_or_percent(
        POSITIVE_INT_OR_PERCENT,
        "spec.batches.size must be a count > 0 or a percentage from 1% to 100%",
        "Targets per batch: a count (`50`) or a percentage of all targets (`\"10%\"`).",
    )
}

fn max_unavailable_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    int_or_percent(
        POSITIVE_INT_OR_PERCENT,
        "spec.batches.maxUnavailable must be a count > 0 or a percentage from 1% to 100%",
        "Most targets of one batch swapped at the same time: a count or a percentage of the batch. Default: the whole batch.",
    )
}

fn step_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    int_or_percent(
        POSITIVE_INT_OR_PERCENT,
        "a step's size must be a count > 0 or a percentage from 1% to 100%",
        "Targets in this batch: a count or a percentage of all targets.",
    )
}

fn tolerance_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = int_or_percent(
        INT_OR_PERCENT,
        "spec.failurePolicy.tolerance must be a count ≥ 0 or a percentage from 0% to 100%",
        "Failed targets (pull failed, timed out, not Ready) tolerated: a count or a percentage of all targets. Default 0: the first failure triggers the action.",
    );
    schema.insert("default".into(), serde_json::json!(0));
    schema
}

/// The operators a label selector knows. Anything else is refused by the API server: the
/// operator must never guess (an unknown operator once rendered as `!key`, selecting every
/// workload *without* the label).
pub const SELECTOR_OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// A `LabelSelector` that cannot widen: not empty, only known operators, `values` exactly
/// when the operator takes them. Bounded lists keep the CEL rules' cost estimate low.
fn workload_selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<LabelSelector>();
    if let Some(expressions) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("matchExpressions"))
        .and_then(|e| e.as_object_mut())
    {
        expressions.insert("maxItems".into(), serde_json::json!(32));
        if let Some(item) = expressions.get_mut("items").and_then(|i| i.as_object_mut()) {
            if let Some(operator) = item
                .get_mut("properties")
                .and_then(|p| p.get_mut("operator"))
                .and_then(|o| o.as_object_mut())
            {
                operator.insert("enum".into(), serde_json::json!(SELECTOR_OPERATORS));
            }
            if let Some(values) = item
                .get_mut("properties")
                .and_then(|p| p.get_mut("values"))
                .and_then(|v| v.as_object_mut())
            {
                values.insert("maxItems".into(), serde_json::json!(256));
            }
            item.insert(
                "x-kubernetes-validations".into(),
                serde_json::json!([{
                    "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
                    "message": "spec.target.selector.matchExpressions: In and NotIn need values; Exists and DoesNotExist take none",
                }]),
            );
        }
    }
    schema.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "has(self.matchLabels) || has(self.matchExpressions)",
            "message": "spec.target.selector must have matchLabels or matchExpressions; an empty selector would select every workload",
        }]),
    );
    schema
}

fn default_true() -> bool {
    true
}
fn default_pull_timeout() -> i64 {
    600
}
fn default_pull_parallelism() -> i32 {
    50
}
fn default_pull_retries() -> i32 {
    2
}
fn default_catch_up_window() -> i64 {
    3600
}
fn default_ready_timeout() -> i64 {
    300
}
fn default_tolerance() -> IntOrString {
    IntOrString::Int(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_carries_rules_columns_and_status() {
        let crd = serde_json::to_string(&RolloutJob::crd()).unwrap();
        for needle in [
            "spec.image is immutable",
            "spec.target is immutable",
            "spec.batches.size must be a count > 0",
            "x-kubernetes-int-or-string",
            "\"shortNames\":[\"rj\",\"rjob\"]",
            "\"status\":{}",
            ".status.progress",
            ".status.behind",
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec: RolloutJobSpec = serde_json::from_value(serde_json::json!({
            "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll"}}},
            "image": "registry.example/toll:2"
        }))
        .unwrap();
        assert!(spec.pre_pull.enabled);
        assert_eq!(spec.pre_pull.timeout_seconds, 600);
        assert_eq!(spec.failure_policy.action, FailureAction::Pause);
        assert_eq!(spec.failure_policy.tolerance, IntOrString::Int(0));
        assert_eq!(spec.offline_nodes.action, OfflineNodeAction::Skip);
        assert!(!spec.paused);
        assert_eq!(spec.catch_up.window_seconds, 3600);
    }
}
