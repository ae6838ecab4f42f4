//! What a plan is made from and what it makes: targets and their views, the snapshot, actions,
//! target states, the plan.

use edgefleet_api::rollout::{RolloutJobSpec, TargetCounts};
use jiff::{SignedDuration, Timestamp};

use crate::prepull::PullState;

/// What runs a target now (its pod, or a Deployment target's Deployment), as the plan needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    /// Image of the target container.
    pub image: String,
    pub created: Timestamp,
    /// Ready, and since when.
    pub ready_since: Option<Timestamp>,
    /// Batch key of this job the pod was chosen for (`TARGET_BATCH_ANNOTATION`), if any.
    pub batch: Option<String>,
    /// When it was chosen.
    pub chosen_at: Option<Timestamp>,
    /// This job's recorded outcome for the target (`Failed`/`Skipped` reason and message).
    pub outcome: Option<Outcome>,
    pub terminating: bool,
}

/// A pre-pull pod of this job, as the plan needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PrePullView {
    pub name: String,
    pub batch: String,
    pub attempt: i32,
    pub created: Timestamp,
    pub state: PullState,
    pub swapped_at: Option<Timestamp>,
    /// A failure recorded on the pre-pull pod itself (when no target pod was left to carry it).
    pub outcome: Option<Outcome>,
}

/// A recorded terminal outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    Failed,
    Skipped,
}

/// One thing the job updates: a DaemonSet's pod slot on one node, a StatefulSet's pod ordinal,
/// or a whole Deployment (see [`Slot`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// `<Kind>/<name>`.
    pub workload: String,
    /// The node of the pod (a Deployment: the first node its pods run on).
    pub node: String,
    /// The image this target must end on.
    pub image: String,
    /// The node's `groupBy` label value ("" when not grouping or unlabelled).
    pub group: String,
    pub node_ready: bool,
    /// What runs the target now, carrying its marks: the workload's pod on the node (none
    /// while a swap is in flight), or for a Deployment target the Deployment itself.
    pub current: Option<PodView>,
    /// This job's newest pre-pull pod on the node (DaemonSet and StatefulSet targets).
    pub prepull: Option<PrePullView>,
    /// How the target is swapped.
    pub slot: Slot,
}

/// How a target is swapped, and what that needs to know.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Slot {
    /// DaemonSet: delete the old pod on the node (the DaemonSet is `OnDelete`).
    #[default]
    Node,
    /// StatefulSet pod `ordinal`: lower the partition to it. A partition cannot skip an
    /// ordinal, so ordinals go strictly from the highest down, one verified before the next,
    /// and an ordinal not updated (failed, skipped) blocks every ordinal below it.
    Ordinal {
        statefulset: String,
        ordinal: i32,
        /// The StatefulSet's partition now (`None`: not a RollingUpdate partition).
        partition: Option<i32>,
    },
    /// Deployment: pre-pull on every node its pods run on, then patch its image; verified when
    /// its rollout is complete. `current` is the Deployment itself (marks are its annotations,
    /// `image` its template's, `ready_since` set once its rollout is complete, `created` the
    /// swap's start).
    ///
    /// The scheduler may place the new pods on nodes other than the pre-pulled ones (a
    /// rolling update creates pods before old ones go): those pay the pull while starting.
    Workload {
        deployment: String,
        pulls: Vec<NodePull>,
    },
}

/// One node a Deployment target pulls on.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePull {
    pub node: String,
    pub node_ready: bool,
    /// This job's newest pre-pull pod for the (Deployment, node).
    pub prepull: Option<PrePullView>,
}

impl Slot {
    /// The pre-pull slot key of a Deployment's pull on `node`.
    pub fn pull_key(deployment: &str, node: &str) -> String {
        format!("Deployment/{deployment}@{node}")
    }
    /// The pre-pull slot key of a StatefulSet ordinal.
    pub fn ordinal_key(statefulset: &str, ordinal: i32) -> String {
        format!("StatefulSet/{statefulset}/{ordinal}")
    }
}

/// Which way the job is going: forward to the new image, or back to each workload's previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Direction {
    /// Prefix of batch keys and outcomes: `""` forward, `"rb-"` rolling back.
    pub batch_prefix: &'static str,
}

impl Direction {
    pub const FORWARD: Self = Self { batch_prefix: "" };
    pub const ROLLBACK: Self = Self {
        batch_prefix: "rb-",
    };
}

impl Direction {
    pub fn batch_key(&self, n: i32) -> String {
        format!("{}{n}", self.batch_prefix)
    }
    /// The batch number of a key of this direction.
    pub fn batch_number(&self, key: &str) -> Option<i32> {
        key.strip_prefix(self.batch_prefix)?.parse().ok()
    }
}

/// Everything a plan is made from.
#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    pub spec: &'a RolloutJobSpec,
    pub direction: Direction,
    /// Targets in rollout order (see [`order_targets`]).
    pub targets: Vec<Target>,
    /// The batch the status says is in progress (0: none started).
    pub current_batch: i32,
    /// Members the status says the current batch was started with.
    pub current_batch_size: i64,
    /// Hold new work: `spec.paused`, a step pause or a failure-budget pause.
    pub hold: bool,
    /// Wind down: abort requested or the job is over.
    pub stop: bool,
    /// The current batch's finish is not recorded yet, so a step pause after it has not begun.
    pub step_pause_pending: bool,
    /// Within `spec.catchUp.windowSeconds` of the last batch: targets skipped because their
    /// node was offline are caught up when it returns (see [`catch_up`]).
    pub catch_up_open: bool,
    pub now: Timestamp,
}

/// One thing to do against the API server. Each is idempotent.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Annotate a target pod as a member of a batch.
    Choose { pod: String, batch: String },
    /// Create a pre-pull pod (a retry is the next attempt). With `swap`, the pod only records
    /// a swap that starts now (pre-pull disabled: it asks for the image the node already runs,
    /// so nothing is pulled); the old pod is deleted once the record is seen.
    PrePull {
        node: String,
        /// The slot key it pulls for (StatefulSet and Deployment targets); `None`: the node.
        slot: Option<String>,
        image: String,
        batch: String,
        attempt: i32,
        swap: bool,
    },
    /// Record the swap start on the pre-pull pod (if any), then delete the old pod.
    Swap {
        node: String,
        pod: String,
        pod_uid: String,
        /// The pre-pull pod to mark with the swap's start, and when it was created (for the
        /// pull duration); `None` when it is marked already (a lost delete asked again).
        prepull: Option<(String, Timestamp)>,
    },
    /// Record the swap start on the pre-pull pod (if any), then lower the StatefulSet's
    /// partition from `from` to `to` (nothing when it is not above `to`).
    LowerPartition {
        statefulset: String,
        from: i32,
        to: i32,
        prepull: Option<(String, Timestamp)>,
    },
    /// Patch a Deployment's container to `image` (its swap).
    SetImage { deployment: String, image: String },
    /// Record a terminal outcome on the target pod (the Deployment, for Deployment targets).
    Record { pod: String, outcome: Outcome },
    /// Record a terminal outcome on a pre-pull pod (no target pod left to carry it).
    RecordOnPrePull { prepull: String, outcome: Outcome },
    /// Mark a verified target pod with its batch (so the batch still counts it) and drop the
    /// pre-pull pod.
    Finish {
        pod: String,
        batch: String,
        prepull: String,
        interruption: Option<SignedDuration>,
    },
    /// Delete a pre-pull pod (failed attempt, cleanup).
    DeletePrePull { name: String },
    /// Clear a target pod's outcome: its node came back, so it is chosen again in its batch
    /// and goes on as a straggler of it — pre-pull first, like every target.
    Reopen { pod: String },
}

/// Where one target stands, derived from the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// On the desired image and verified.
    Done,
    Failed,
    Skipped,
    /// Not chosen yet.
    Pending,
    /// Chosen, waiting for its node to come back (offlineNodes: Wait).
    WaitingForNode,
    /// Chosen, no pull started (waiting for a pull slot).
    Chosen,
    Pulling,
    /// Pulled, waiting for a swap slot.
    Pulled,
    /// Old pod deleted; new pod not yet verified.
    Swapping,
}

impl TargetState {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Skipped)
    }
}

/// The plan: actions, and the figures status is made from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub counts: TargetCounts,
    pub total_batches: i32,
    /// The batch in progress after this plan (may be the next one, just started).
    pub current_batch: i32,
    /// Members of the current batch.
    pub current_batch_size: i64,
    /// Figures of the members of the batch that was current when planning (`snap.current_batch`;
    /// the batch that just finished when this plan started the next one).
    pub current_batch_counts: TargetCounts,
    /// The `groupBy` value(s) of the batch in progress after this plan (`None`: not grouping).
    pub current_batch_group: Option<String>,
    /// The current batch finished with this plan (all members terminal or waiting for a node).
    pub current_batch_done: bool,
    /// A batch was started by this plan.
    pub started_batch: Option<i32>,
    /// Every target is terminal.
    pub complete: bool,
    /// Failures beyond the tolerance.
    pub budget_exceeded: bool,
    /// Per-target failures (and skips) seen in this plan, for status and events.
    pub failures: Vec<(Target, Outcome)>,
    /// Targets skipped because their node is offline, waited for while the catch-up window
    /// is open (they keep the job from completing).
    pub catching_up: i64,
    /// Every target is terminal (complete, unless offline ones are still waited for).
    pub all_terminal: bool,
}
