//! The pure heart of the rollout: from a snapshot of the cluster (targets, their pods and
//! pre-pull pods) decide what to do next and what the status says. No I/O here, so every rule
//! has a table test.
//!
//! Per target (a workload's pod slot on one node) the life is:
//!
//! ```text
//! Pending ─▶ chosen for batch k ─▶ pre-pull pod ─▶ pulled ─▶ swap (old pod deleted)
//!                  │                    │ failed: retry, then Failed        │
//!                  │ node offline: Skip / Wait                              ▼
//!                  ▼                                          new pod Ready for minReadySeconds
//!               Skipped                                                      │
//!                                                                  Done (pre-pull pod removed)
//! ```
//!
//! Every step leaves a mark on the cluster (an annotation on the target pod, a pre-pull pod with
//! its labels and annotations), so a restarted operator rebuilds exactly this picture.

use edgefleet_api::rollout::{
    BatchPolicy, FailureAction, OfflineNodeAction, RolloutJobSpec, TargetCounts,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::prepull::PullState;

/// A target's pod as the plan needs it.
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
    /// The workload's pod on the node; none while a swap is in flight.
    pub pod: Option<PodView>,
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
    /// its rollout is complete. `pod` is the Deployment itself (marks are its annotations,
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
    /// Figures of the current batch's members.
    pub current_batch_counts: TargetCounts,
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

/// Sorts targets into rollout order — deterministic, so a restarted operator picks the same
/// next batch: DaemonSet slots by group, node, workload; StatefulSet ordinals by group,
/// workload, then from the highest ordinal down (the only order a partition allows);
/// Deployments by group, then name.
pub fn order_targets(targets: &mut [Target]) {
    fn key(t: &Target) -> (&str, &str, &str, i64) {
        match &t.slot {
            Slot::Node => (t.group.as_str(), t.node.as_str(), t.workload.as_str(), 0),
            Slot::Ordinal { ordinal, .. } => (
                t.group.as_str(),
                t.workload.as_str(),
                "",
                -i64::from(*ordinal),
            ),
            Slot::Workload { .. } => (t.group.as_str(), t.workload.as_str(), "", 0),
        }
    }
    targets.sort_by(|a, b| key(a).cmp(&key(b)));
}

/// `value` of `total`: a count, or a percentage rounded up (at least 1 when `total > 0`).
pub fn scaled(value: &IntOrString, total: i64) -> i64 {
    match value {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let n = (total * pct + 99) / 100;
            if pct > 0 { n.max(1) } else { 0 }
        }
    }
}

/// Failures tolerated: a count, or a percentage of all targets rounded down.
pub fn tolerance(value: &IntOrString, total: i64) -> i64 {
    match value {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            total * pct / 100
        }
    }
}

/// Size of batch `n` (1-based) for `total` targets.
pub fn batch_size(policy: &BatchPolicy, n: i32, total: i64) -> i64 {
    if let Some(steps) = &policy.steps {
        return match usize::try_from(n - 1).ok().and_then(|i| steps.get(i)) {
            Some(step) => scaled(&step.size, total).max(1),
            // Whatever the steps did not cover goes in one last batch.
            None => total.max(1),
        };
    }
    let size = policy.size.as_ref().map_or_else(
        || scaled(&IntOrString::String("10%".into()), total),
        |s| scaled(s, total),
    );
    size.max(1)
}

/// How many batches the targets still pending (given their groups, in order) make when the
/// next batch is number `first`. Sizes are taken of all `total` targets, as when the batches
/// start, and steps are counted from `first` on.
pub fn count_batches(policy: &BatchPolicy, groups: &[&str], total: i64, first: i32) -> i32 {
    let mut n = first;
    let mut i = 0;
    while i < groups.len() {
        i += take_batch(policy, &groups[i..], batch_size(policy, n, total));
        n += 1;
    }
    n - first
}

/// How many of the next targets (given their groups, in order) one batch of `size` takes: whole
/// groups when grouping (at least one group, even when larger than `size`).
fn take_batch(policy: &BatchPolicy, groups: &[&str], size: i64) -> usize {
    let size = usize::try_from(size).unwrap_or(usize::MAX).max(1);
    if policy.group_by.is_none() {
        return size.min(groups.len());
    }
    let mut taken = 0;
    while taken < groups.len() {
        let group = groups[taken];
        let len = groups[taken..].iter().take_while(|g| **g == group).count();
        if taken > 0 && taken + len > size {
            break;
        }
        taken += len;
    }
    taken
}

/// Makes the plan for one reconcile.
pub fn plan(snap: &Snapshot<'_>) -> Plan {
    let spec = snap.spec;
    let dir = &snap.direction;
    let total = i64::try_from(snap.targets.len()).unwrap_or(i64::MAX);
    let mut out = Plan {
        current_batch: snap.current_batch,
        ..Plan::default()
    };

    let states: Vec<TargetState> = snap.targets.iter().map(|t| state_of(snap, t)).collect();

    // Figures first: they decide the failure budget.
    let mut counts = TargetCounts {
        targets: total,
        ..TargetCounts::default()
    };
    for (t, s) in snap.targets.iter().zip(&states) {
        let on_image = t.pod.as_ref().is_some_and(|p| p.image == t.image);
        if on_image {
            counts.updated += 1;
            if t.pod.as_ref().is_some_and(|p| p.ready_since.is_some()) {
                counts.ready += 1;
            }
        }
        match s {
            TargetState::Failed => counts.failed += 1,
            TargetState::Skipped => counts.skipped += 1,
            _ => {}
        }
        // Pre-pulled by this job: pulled and waiting, or past the swap (the new pod carries the
        // batch mark once the pre-pull pod is gone).
        let ours = t.prepull.is_some() || t.pod.as_ref().is_some_and(|p| p.batch.is_some());
        let pulled = spec.pre_pull.enabled
            && (*s == TargetState::Pulled
                || (matches!(s, TargetState::Swapping | TargetState::Done) && on_image && ours));
        if pulled {
            counts.pre_pulled += 1;
        }
    }
    out.budget_exceeded = counts.failed > tolerance(&spec.failure_policy.tolerance, total);
    out.counts = counts;

    let active = !snap.stop && !snap.hold && !out.budget_exceeded;
    let in_current = |t: &Target| member_batch(dir, t) == Some(snap.current_batch);

    // Work on the members of the current batch, and on stragglers of earlier batches
    // (offline nodes waited for, swaps still in flight).
    let pull_limit = usize::try_from(spec.pre_pull.parallelism)
        .unwrap_or(1)
        .max(1);
    let mut pulling: usize = snap
        .targets
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s == TargetState::Pulling)
        .map(|(t, _)| match &t.slot {
            Slot::Workload { pulls, .. } => pulls
                .iter()
                .filter(|p| {
                    p.prepull
                        .as_ref()
                        .is_some_and(|pp| pp.state == PullState::Pulling)
                })
                .count(),
            _ => 1,
        })
        .sum();
    let mut swapping = states
        .iter()
        .filter(|s| **s == TargetState::Swapping)
        .count();
    let batch_members = snap.targets.iter().filter(|t| in_current(t)).count();
    let swap_limit = spec
        .batches
        .max_unavailable
        .as_ref()
        .map_or(usize::MAX, |m| {
            usize::try_from(scaled(m, i64::try_from(batch_members).unwrap_or(0))).unwrap_or(1)
        })
        .max(1);

    let gates = ordinal_gates(&snap.targets, &states);
    for ((t, s), gate) in snap.targets.iter().zip(&states).zip(&gates) {
        let ours = member_batch(dir, t).is_some() || t.prepull.is_some();
        if !ours && *s != TargetState::Swapping {
            continue;
        }
        let mut limits = Limits {
            pulling: &mut pulling,
            pull_limit,
            swapping: &mut swapping,
            swap_limit,
        };
        match &t.slot {
            Slot::Workload { deployment, pulls } => {
                step_deployment(snap, t, deployment, pulls, s, active, &mut limits, &mut out);
            }
            _ => step_target(snap, t, s, gate, active, &mut limits, &mut out),
        }
    }

    // Batch bookkeeping.
    let members: Vec<usize> = (0..snap.targets.len())
        .filter(|&i| in_current(&snap.targets[i]))
        .collect();
    let unfinished = members
        .iter()
        .any(|&i| !states[i].is_terminal() && states[i] != TargetState::WaitingForNode);
    let pending: Vec<usize> = (0..snap.targets.len())
        .filter(|&i| states[i] == TargetState::Pending)
        .collect();
    let missing = snap.current_batch_size - i64::try_from(members.len()).unwrap_or(i64::MAX);

    out.current_batch_size = i64::try_from(members.len()).unwrap_or(0);
    for &i in &members {
        let c = &mut out.current_batch_counts;
        c.targets += 1;
        match states[i] {
            TargetState::Done => {
                c.updated += 1;
                c.ready += 1;
            }
            TargetState::Swapping => c.updated += 1,
            TargetState::Failed => c.failed += 1,
            TargetState::Skipped => c.skipped += 1,
            _ => {}
        }
        if matches!(
            states[i],
            TargetState::Pulled | TargetState::Swapping | TargetState::Done
        ) {
            c.pre_pulled += 1;
        }
    }
    if snap.current_batch > 0 && missing > 0 && !pending.is_empty() && !snap.stop {
        // Restarted while choosing the members of the current batch: finish choosing, in the
        // same order, so the batch is what it was meant to be.
        let take = usize::try_from(missing).unwrap_or(0).min(pending.len());
        for &i in &pending[..take] {
            choose(dir, &snap.targets[i], snap.current_batch, &mut out);
        }
        out.current_batch_size += i64::try_from(take).unwrap_or(0);
    } else if !unfinished {
        out.current_batch_done = snap.current_batch > 0;
        // A step pause after this batch starts from its finish time, which the status records
        // with this plan: the next batch waits for a later reconcile to judge the pause.
        let pause_follows = usize::try_from(snap.current_batch - 1)
            .ok()
            .and_then(|i| spec.batches.steps.as_ref()?.get(i))
            .is_some_and(|step| step.pause.is_some());
        if active && !pending.is_empty() && !(pause_follows && snap.step_pause_pending) {
            let next = snap.current_batch + 1;
            let groups: Vec<&str> = pending
                .iter()
                .map(|&i| snap.targets[i].group.as_str())
                .collect();
            let take = take_batch(
                &spec.batches,
                &groups,
                batch_size(&spec.batches, next, total),
            );
            for &i in &pending[..take] {
                choose(dir, &snap.targets[i], next, &mut out);
            }
            out.current_batch = next;
            out.current_batch_size = i64::try_from(take).unwrap_or(0);
            out.started_batch = Some(next);
        }
    }

    let remaining: Vec<&str> = pending
        .iter()
        .map(|&i| snap.targets[i].group.as_str())
        .collect();
    // The pending targets as they were before this plan chose any: a batch just started is
    // their head.
    let first = snap.current_batch + 1;
    let after = count_batches(&spec.batches, &remaining, total, first);
    out.total_batches = snap.current_batch + after;
    catch_up(snap, &states, active, &mut out);
    out.all_terminal = states.iter().all(TargetState::is_terminal);
    out.complete = out.all_terminal && out.catching_up == 0;
    out
}

/// The outcome reason of a target whose node was offline (skipped, or waited for too long).
pub const NODE_OFFLINE: &str = "NodeOffline";

/// Catching up nodes that come back. While the window is open, a DaemonSet target skipped (or
/// failed) because its node was offline is reopened once the node is Ready: chosen again in
/// its batch, it is pre-pulled before its swap, as every target.
/// Those still offline are waited for (`catching_up`). StatefulSet ordinals are not reopened:
/// the ones below an offline ordinal were skipped as `Blocked` and a partition cannot go back;
/// they stay behind it for a new job. After the window, the offline ones stay behind (held).
fn catch_up(snap: &Snapshot<'_>, states: &[TargetState], active: bool, out: &mut Plan) {
    if !snap.catch_up_open || snap.stop {
        return;
    }
    for (t, s) in snap.targets.iter().zip(states) {
        let Some(pod) = &t.pod else { continue };
        let offline = matches!(s, TargetState::Skipped | TargetState::Failed)
            && matches!(t.slot, Slot::Node)
            && pod
                .outcome
                .as_ref()
                .is_some_and(|o| o.reason == NODE_OFFLINE);
        if !offline {
            continue;
        }
        out.catching_up += 1;
        if t.node_ready && active {
            out.actions.push(Action::Reopen {
                pod: pod.name.clone(),
            });
        }
    }
}

fn choose(dir: &Direction, t: &Target, batch: i32, out: &mut Plan) {
    if let Some(pod) = &t.pod {
        out.actions.push(Action::Choose {
            pod: pod.name.clone(),
            batch: dir.batch_key(batch),
        });
    }
}

/// The batch (of this direction) a target was chosen for.
pub fn member_batch(dir: &Direction, t: &Target) -> Option<i32> {
    if let Some(key) = t.pod.as_ref().and_then(|p| p.batch.as_deref()) {
        return dir.batch_number(key);
    }
    t.prepull.as_ref().and_then(|p| dir.batch_number(&p.batch))
}

/// Where a target stands.
pub fn state_of(snap: &Snapshot<'_>, t: &Target) -> TargetState {
    let dir = &snap.direction;
    let spec = snap.spec;
    let outcome = t
        .pod
        .as_ref()
        .and_then(|p| p.outcome.as_ref())
        .or(t.prepull.as_ref().and_then(|p| p.outcome.as_ref()));
    if let Some(o) = outcome {
        return match o.kind {
            OutcomeKind::Failed => TargetState::Failed,
            OutcomeKind::Skipped => TargetState::Skipped,
        };
    }
    if let Slot::Workload { pulls, .. } = &t.slot {
        return deployment_state(snap, t, pulls);
    }
    let swapped = t.prepull.as_ref().is_some_and(|p| p.swapped_at.is_some());
    let Some(pod) = &t.pod else {
        // No pod: either our swap is in flight, or the workload does not run here now.
        return if swapped {
            TargetState::Swapping
        } else {
            TargetState::Done
        };
    };
    if pod.terminating {
        return if swapped || member_batch(dir, t).is_some() {
            TargetState::Swapping
        } else {
            TargetState::Pending
        };
    }
    if pod.image == t.image {
        let min_ready = SignedDuration::from_secs(spec.verify.min_ready_seconds);
        let verified = pod
            .ready_since
            .is_some_and(|since| since + min_ready <= snap.now);
        return if verified {
            TargetState::Done
        } else {
            TargetState::Swapping
        };
    }
    if member_batch(dir, t).is_none() {
        return TargetState::Pending;
    }
    if swapped {
        return TargetState::Swapping;
    }
    if !t.node_ready && spec.offline_nodes.action == OfflineNodeAction::Wait {
        return TargetState::WaitingForNode;
    }
    match t.prepull.as_ref().map(|p| &p.state) {
        None => TargetState::Chosen,
        Some(PullState::Pulled) => TargetState::Pulled,
        Some(_) => TargetState::Pulling,
    }
}

/// Whether a StatefulSet ordinal may be swapped, given the ordinals above it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Every ordinal above is done (or it is not an ordinal).
    Open,
    /// An ordinal above is still on its way.
    Closed,
    /// An ordinal above was not updated: the partition can never pass it.
    Blocked(String),
}

/// The gate of every target (see [`Gate`]): one walk per StatefulSet from its highest ordinal.
pub fn ordinal_gates(targets: &[Target], states: &[TargetState]) -> Vec<Gate> {
    let mut gates = vec![Gate::Open; targets.len()];
    let mut by_set: std::collections::HashMap<&str, Vec<(i32, usize)>> =
        std::collections::HashMap::new();
    for (i, t) in targets.iter().enumerate() {
        if let Slot::Ordinal {
            statefulset,
            ordinal,
            ..
        } = &t.slot
        {
            by_set.entry(statefulset).or_default().push((*ordinal, i));
        }
    }
    for (set, mut ordinals) in by_set {
        ordinals.sort_by_key(|o| std::cmp::Reverse(o.0));
        let mut gate = Gate::Open;
        for (ordinal, i) in ordinals {
            gates[i] = gate.clone();
            if matches!(gate, Gate::Blocked(_)) {
                continue;
            }
            match states[i] {
                TargetState::Done => {}
                TargetState::Failed | TargetState::Skipped => {
                    gate = Gate::Blocked(format!(
                        "StatefulSet {set} ordinal {ordinal} above it was not updated, and a partition cannot skip an ordinal"
                    ));
                }
                _ => gate = Gate::Closed,
            }
        }
    }
    gates
}

/// Pull and swap slots left in this plan.
struct Limits<'a> {
    pulling: &'a mut usize,
    pull_limit: usize,
    swapping: &'a mut usize,
    swap_limit: usize,
}

/// The pre-pull slot key of a DaemonSet or StatefulSet target.
fn slot_key(t: &Target) -> Option<String> {
    match &t.slot {
        Slot::Ordinal {
            statefulset,
            ordinal,
            ..
        } => Some(Slot::ordinal_key(statefulset, *ordinal)),
        _ => None,
    }
}

/// Decides the next step of one DaemonSet or StatefulSet target that is (or was) part of a
/// batch.
fn step_target(
    snap: &Snapshot<'_>,
    t: &Target,
    state: &TargetState,
    gate: &Gate,
    active: bool,
    limits: &mut Limits<'_>,
    out: &mut Plan,
) {
    let (pull_limit, swap_limit) = (limits.pull_limit, limits.swap_limit);
    let pulling = &mut *limits.pulling;
    let swapping = &mut *limits.swapping;
    let spec = snap.spec;
    let dir = &snap.direction;
    let now = snap.now;
    let batch = member_batch(dir, t)
        .map(|n| dir.batch_key(n))
        .unwrap_or_default();
    match state {
        TargetState::Done => {
            // Verified: keep the membership on the new pod, drop the pre-pull pod.
            if let (Some(pod), Some(pp)) = (&t.pod, &t.prepull)
                && pp.outcome.is_none()
            {
                // Measured once: a Finish repeated before the cache shows it done (the pod
                // already marked) must not observe the interruption again.
                let interruption = match (pp.swapped_at, pod.ready_since, &pod.batch) {
                    (Some(gone), Some(ready), None) => Some(ready.duration_since(gone)),
                    _ => None,
                };
                out.actions.push(Action::Finish {
                    pod: pod.name.clone(),
                    batch,
                    prepull: pp.name.clone(),
                    interruption,
                });
            }
        }
        TargetState::Failed | TargetState::Skipped => {
            // The outcome is recorded on the target pod: the pre-pull pod has no more use.
            if let Some(pp) = &t.prepull
                && pp.outcome.is_none()
            {
                out.actions.push(Action::DeletePrePull {
                    name: pp.name.clone(),
                });
            }
        }
        TargetState::Pending => {}
        TargetState::WaitingForNode => {
            let limit = SignedDuration::from_secs(spec.offline_nodes.wait_seconds.unwrap_or(3600));
            let chosen_at = t.pod.as_ref().and_then(|p| p.chosen_at);
            if chosen_at.is_some_and(|at| at + limit <= now) {
                let message = format!(
                    "node {} stayed NotReady for offlineNodes.waitSeconds ({}s)",
                    t.node,
                    limit.as_secs()
                );
                fail(t, NODE_OFFLINE, &message, out);
            }
        }
        TargetState::Chosen => {
            if snap.stop {
                return;
            }
            if let Gate::Blocked(message) = gate {
                skip(t, "Blocked", message, out);
                return;
            }
            if !t.node_ready {
                // offlineNodes: Skip (Wait is its own state). Listed in status like a failure.
                let outcome = Outcome {
                    kind: OutcomeKind::Skipped,
                    reason: NODE_OFFLINE.into(),
                    message: format!("node {} is NotReady: skipped", t.node),
                };
                if let Some(pod) = &t.pod {
                    out.actions.push(Action::Record {
                        pod: pod.name.clone(),
                        outcome: outcome.clone(),
                    });
                }
                out.failures.push((t.clone(), outcome));
                return;
            }
            if !active {
                return;
            }
            if !spec.pre_pull.enabled {
                // No pull, but the swap still needs a record that outlives the old pod: a
                // pre-pull pod of the image the node already has, marked as swapping.
                if let Some(pod) = &t.pod
                    && *swapping < swap_limit
                    && *gate == Gate::Open
                {
                    *swapping += 1;
                    out.actions.push(Action::PrePull {
                        node: t.node.clone(),
                        slot: slot_key(t),
                        image: pod.image.clone(),
                        batch,
                        attempt: 1,
                        swap: true,
                    });
                }
            } else if *pulling < pull_limit {
                *pulling += 1;
                out.actions.push(Action::PrePull {
                    node: t.node.clone(),
                    slot: slot_key(t),
                    image: t.image.clone(),
                    batch,
                    attempt: 1,
                    swap: false,
                });
            }
        }
        TargetState::Pulling => {
            let Some(pp) = &t.prepull else { return };
            if let Gate::Blocked(message) = gate
                && !snap.stop
            {
                skip(t, "Blocked", message, out);
                return;
            }
            if went_offline(snap, t, out) {
                return;
            }
            let timeout = SignedDuration::from_secs(spec.pre_pull.timeout_seconds);
            let failure = match &pp.state {
                PullState::Failed { reason, message } => Some((reason.clone(), message.clone())),
                PullState::Pulling if pp.created + timeout <= now => Some((
                    "PullTimeout".to_string(),
                    format!("image not pulled within {}s", spec.pre_pull.timeout_seconds),
                )),
                _ => None,
            };
            let Some((reason, message)) = failure else {
                return;
            };
            if pp.attempt <= spec.pre_pull.retries && !snap.stop {
                // A retry is a fresh pod: the kubelet's own back-off would hold the node's
                // slot for minutes.
                out.actions.push(Action::DeletePrePull {
                    name: pp.name.clone(),
                });
                if active {
                    out.actions.push(Action::PrePull {
                        node: t.node.clone(),
                        slot: slot_key(t),
                        image: t.image.clone(),
                        batch,
                        attempt: pp.attempt + 1,
                        swap: false,
                    });
                }
            } else {
                fail(t, "PullFailed", &format!("{reason}: {message}"), out);
            }
        }
        TargetState::Pulled => {
            if went_offline(snap, t, out) {
                return;
            }
            if let Gate::Blocked(message) = gate
                && !snap.stop
            {
                skip(t, "Blocked", message, out);
            } else if active && *gate == Gate::Open {
                try_swap(t, t.prepull.as_ref(), swapping, swap_limit, out);
            }
        }
        TargetState::Swapping => {
            let pp = t.prepull.as_ref();
            // The old pod may still be there if a delete was lost (or the partition was not
            // lowered): ask again (idempotent).
            if let (Some(pp), Some(pod)) = (pp, &t.pod)
                && pp.swapped_at.is_some()
                && pod.image != t.image
                && !pod.terminating
            {
                match &t.slot {
                    Slot::Ordinal {
                        statefulset,
                        ordinal,
                        partition: Some(partition),
                    } if partition > ordinal => {
                        out.actions.push(Action::LowerPartition {
                            statefulset: statefulset.clone(),
                            from: *partition,
                            to: *ordinal,
                            prepull: None,
                        });
                        return;
                    }
                    Slot::Ordinal { .. } => {}
                    _ => {
                        out.actions.push(Action::Swap {
                            node: t.node.clone(),
                            pod: pod.name.clone(),
                            pod_uid: pod.uid.clone(),
                            prepull: None,
                        });
                        return;
                    }
                }
            }
            // Verification clock: from our swap, else from the new pod's creation (a pod that
            // reached the image without us, e.g. recreated after an eviction).
            let since = pp.and_then(|p| p.swapped_at).or(t
                .pod
                .as_ref()
                .filter(|p| p.image == t.image)
                .map(|p| p.created));
            let limit = SignedDuration::from_secs(spec.verify.ready_timeout_seconds);
            if since.is_some_and(|at| at + limit <= now) {
                let message = format!(
                    "new pod not Ready within {}s of the swap",
                    spec.verify.ready_timeout_seconds
                );
                fail(t, "NotReady", &message, out);
            }
        }
    }
}

/// offlineNodes: Skip (Wait is its own state) for a DaemonSet target whose node went away
/// while it pulled or waited for its swap: a pull that cannot finish is not the image's
/// failure, and a swap there could not complete. Skipped, and caught up (pre-pulled again) if
/// the node returns within the catch-up window.
fn went_offline(snap: &Snapshot<'_>, t: &Target, out: &mut Plan) -> bool {
    if t.node_ready || snap.stop || !matches!(t.slot, Slot::Node) {
        return false;
    }
    let message = format!("node {} went NotReady before its swap: skipped", t.node);
    skip(t, NODE_OFFLINE, &message, out);
    true
}

fn try_swap(
    t: &Target,
    prepull: Option<&PrePullView>,
    swapping: &mut usize,
    swap_limit: usize,
    out: &mut Plan,
) {
    let Some(pod) = &t.pod else { return };
    if *swapping >= swap_limit {
        return;
    }
    if let Slot::Ordinal {
        statefulset,
        ordinal,
        partition,
    } = &t.slot
    {
        // Not a partition (changed by hand, which pauses the job): nothing to lower.
        let Some(partition) = partition else { return };
        *swapping += 1;
        out.actions.push(Action::LowerPartition {
            statefulset: statefulset.clone(),
            from: *partition,
            to: *ordinal,
            prepull: prepull.map(|p| (p.name.clone(), p.created)),
        });
        return;
    }
    *swapping += 1;
    out.actions.push(Action::Swap {
        node: t.node.clone(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        prepull: prepull.map(|p| (p.name.clone(), p.created)),
    });
}

fn fail(t: &Target, reason: &str, message: &str, out: &mut Plan) {
    let outcome = Outcome {
        kind: OutcomeKind::Failed,
        reason: reason.into(),
        message: message.into(),
    };
    match (&t.pod, &t.prepull) {
        (Some(pod), prepull) => {
            out.actions.push(Action::Record {
                pod: pod.name.clone(),
                outcome: outcome.clone(),
            });
            if let Some(pp) = prepull {
                out.actions.push(Action::DeletePrePull {
                    name: pp.name.clone(),
                });
            }
        }
        // No pod left to carry the outcome: the pre-pull pod keeps it until the job ends.
        (None, Some(pp)) => out.actions.push(Action::RecordOnPrePull {
            prepull: pp.name.clone(),
            outcome: outcome.clone(),
        }),
        (None, None) => {}
    }
    out.failures.push((t.clone(), outcome));
}

fn skip(t: &Target, reason: &str, message: &str, out: &mut Plan) {
    let outcome = Outcome {
        kind: OutcomeKind::Skipped,
        reason: reason.into(),
        message: message.into(),
    };
    if let Some(pod) = &t.pod {
        out.actions.push(Action::Record {
            pod: pod.name.clone(),
            outcome: outcome.clone(),
        });
    }
    if let Some(pp) = &t.prepull {
        out.actions.push(Action::DeletePrePull {
            name: pp.name.clone(),
        });
    }
    out.failures.push((t.clone(), outcome));
}

/// Where a Deployment target stands (its outcome already checked).
fn deployment_state(snap: &Snapshot<'_>, t: &Target, pulls: &[NodePull]) -> TargetState {
    let spec = snap.spec;
    let Some(d) = &t.pod else {
        return TargetState::Done;
    };
    if d.image == t.image {
        let min_ready = SignedDuration::from_secs(spec.verify.min_ready_seconds);
        let verified = d
            .ready_since
            .is_some_and(|since| since + min_ready <= snap.now);
        return if verified {
            TargetState::Done
        } else {
            TargetState::Swapping
        };
    }
    if member_batch(&snap.direction, t).is_none() {
        return TargetState::Pending;
    }
    if !t.node_ready && spec.offline_nodes.action == OfflineNodeAction::Wait {
        return TargetState::WaitingForNode;
    }
    let pulled = |p: &NodePull| {
        p.prepull
            .as_ref()
            .is_some_and(|pp| pp.state == PullState::Pulled)
    };
    if !spec.pre_pull.enabled || pulls.iter().all(pulled) {
        TargetState::Pulled
    } else if pulls.iter().all(|p| p.prepull.is_none()) {
        TargetState::Chosen
    } else {
        TargetState::Pulling
    }
}

/// Decides the next step of a Deployment target that is (or was) part of a batch: a pull on
/// each of its nodes, then one image patch once every node pulled; a node that cannot pull
/// fails the whole Deployment, which is then never patched.
#[allow(clippy::too_many_arguments)]
fn step_deployment(
    snap: &Snapshot<'_>,
    t: &Target,
    deployment: &str,
    pulls: &[NodePull],
    state: &TargetState,
    active: bool,
    limits: &mut Limits<'_>,
    out: &mut Plan,
) {
    let spec = snap.spec;
    let dir = &snap.direction;
    let now = snap.now;
    let batch = member_batch(dir, t)
        .map(|n| dir.batch_key(n))
        .unwrap_or_default();
    let drop_pulls = |out: &mut Plan| {
        for pp in pulls.iter().filter_map(|p| p.prepull.as_ref()) {
            out.actions.push(Action::DeletePrePull {
                name: pp.name.clone(),
            });
        }
    };
    match state {
        TargetState::Done | TargetState::Failed | TargetState::Skipped => drop_pulls(out),
        TargetState::Pending => {}
        TargetState::WaitingForNode => {
            let limit = SignedDuration::from_secs(spec.offline_nodes.wait_seconds.unwrap_or(3600));
            let chosen_at = t.pod.as_ref().and_then(|p| p.chosen_at);
            if chosen_at.is_some_and(|at| at + limit <= now) {
                let message = format!(
                    "a node of {} stayed NotReady for offlineNodes.waitSeconds ({}s)",
                    t.workload,
                    limit.as_secs()
                );
                fail(t, "NodeOffline", &message, out);
            }
        }
        TargetState::Chosen | TargetState::Pulling => {
            if snap.stop {
                return;
            }
            if *state == TargetState::Chosen && !t.node_ready {
                let offline: Vec<&str> = pulls
                    .iter()
                    .filter(|p| !p.node_ready)
                    .map(|p| p.node.as_str())
                    .collect();
                let message = format!("node(s) {} NotReady: skipped", offline.join(", "));
                skip(t, "NodeOffline", &message, out);
                return;
            }
            let timeout = SignedDuration::from_secs(spec.pre_pull.timeout_seconds);
            for p in pulls {
                let new_pull = |attempt| Action::PrePull {
                    node: p.node.clone(),
                    slot: Some(Slot::pull_key(deployment, &p.node)),
                    image: t.image.clone(),
                    batch: batch.clone(),
                    attempt,
                    swap: false,
                };
                let Some(pp) = &p.prepull else {
                    if active && *limits.pulling < limits.pull_limit {
                        *limits.pulling += 1;
                        out.actions.push(new_pull(1));
                    }
                    continue;
                };
                let failure = match &pp.state {
                    PullState::Failed { reason, message } => {
                        Some((reason.clone(), message.clone()))
                    }
                    PullState::Pulling if pp.created + timeout <= now => Some((
                        "PullTimeout".to_string(),
                        format!("image not pulled within {}s", spec.pre_pull.timeout_seconds),
                    )),
                    _ => None,
                };
                let Some((reason, message)) = failure else {
                    continue;
                };
                if pp.attempt <= spec.pre_pull.retries {
                    out.actions.push(Action::DeletePrePull {
                        name: pp.name.clone(),
                    });
                    if active {
                        out.actions.push(new_pull(pp.attempt + 1));
                    }
                } else {
                    let message = format!("node {}: {reason}: {message}", p.node);
                    fail(t, "PullFailed", &message, out);
                    drop_pulls(out);
                    return;
                }
            }
        }
        TargetState::Pulled => {
            if active && *limits.swapping < limits.swap_limit {
                *limits.swapping += 1;
                out.actions.push(Action::SetImage {
                    deployment: deployment.to_string(),
                    image: t.image.clone(),
                });
            }
        }
        TargetState::Swapping => {
            // The clock runs from the swap (recorded with it), else from when it was seen.
            let since = t.pod.as_ref().map(|d| d.created);
            let limit = SignedDuration::from_secs(spec.verify.ready_timeout_seconds);
            if since.is_some_and(|at| at + limit <= now) {
                let message = format!(
                    "rollout of {} not complete (every replica updated and Ready) within {}s of the swap",
                    t.workload, spec.verify.ready_timeout_seconds
                );
                fail(t, "NotReady", &message, out);
            }
        }
    }
}

/// What the failure policy makes of an exceeded budget.
pub fn budget_action(spec: &RolloutJobSpec) -> FailureAction {
    spec.failure_policy.action
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_api::rollout::RolloutJobSpec;

    const NEW: &str = "toll:2";
    const OLD: &str = "toll:1";

    fn spec(extra: serde_json::Value) -> RolloutJobSpec {
        let mut base = serde_json::json!({
            "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll"}}},
            "image": NEW,
            "prePull": {"parallelism": 2, "retries": 1, "timeoutSeconds": 60},
            "verify": {"readyTimeoutSeconds": 30, "minReadySeconds": 5},
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn t0() -> Timestamp {
        "2026-11-21T10:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(secs)
    }

    fn pod(node: &str, image: &str) -> PodView {
        PodView {
            name: format!("toll-{node}"),
            uid: format!("uid-{node}"),
            image: image.into(),
            created: t0(),
            ready_since: Some(t0()),
            batch: None,
            chosen_at: None,
            outcome: None,
            terminating: false,
        }
    }

    fn target(node: &str, group: &str) -> Target {
        Target {
            workload: "DaemonSet/toll".into(),
            node: node.into(),
            image: NEW.into(),
            group: group.into(),
            node_ready: true,
            pod: Some(pod(node, OLD)),
            prepull: None,
            slot: Slot::Node,
        }
    }

    fn chosen(mut t: Target, batch: i32) -> Target {
        if let Some(p) = t.pod.as_mut() {
            p.batch = Some(batch.to_string());
            p.chosen_at = Some(t0());
        }
        t
    }

    fn with_prepull(mut t: Target, state: PullState, attempt: i32) -> Target {
        t.prepull = Some(PrePullView {
            name: format!("pp-{}-{attempt}", t.node),
            batch: member_batch(&Direction::FORWARD, &t)
                .unwrap_or(1)
                .to_string(),
            attempt,
            created: t0(),
            state,
            swapped_at: None,
            outcome: None,
        });
        t
    }

    fn snapshot<'a>(
        spec: &'a RolloutJobSpec,
        targets: Vec<Target>,
        batch: i32,
        size: i64,
        now: Timestamp,
    ) -> Snapshot<'a> {
        let mut targets = targets;
        order_targets(&mut targets);
        Snapshot {
            spec,
            direction: Direction::FORWARD,
            targets,
            current_batch: batch,
            current_batch_size: size,
            hold: false,
            stop: false,
            step_pause_pending: true,
            catch_up_open: false,
            now,
        }
    }

    fn nodes(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| target(&format!("edge-{i:02}"), ""))
            .collect()
    }

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Choose { .. } => "choose",
                Action::PrePull { .. } => "prepull",
                Action::Swap { .. } => "swap",
                Action::LowerPartition { .. } => "partition",
                Action::SetImage { .. } => "set-image",
                Action::Record { .. } => "record",
                Action::RecordOnPrePull { .. } => "record-pp",
                Action::Finish { .. } => "finish",
                Action::DeletePrePull { .. } => "delete-pp",
                Action::Reopen { .. } => "reopen",
            })
            .collect()
    }

    #[test]
    fn sizes_counts_and_percentages() {
        assert_eq!(scaled(&IntOrString::String("10%".into()), 2000), 200);
        assert_eq!(
            scaled(&IntOrString::String("10%".into()), 5),
            1,
            "rounds up, at least one"
        );
        assert_eq!(scaled(&IntOrString::Int(7), 5), 7);
        assert_eq!(
            tolerance(&IntOrString::String("2%".into()), 120),
            2,
            "rounds down"
        );
        assert_eq!(tolerance(&IntOrString::Int(0), 120), 0);
    }

    #[test]
    fn a_fresh_job_chooses_its_first_batch_in_order() {
        let spec = spec(serde_json::json!({"batches": {"size": 3}}));
        let plan = plan(&snapshot(&spec, nodes(10), 0, 0, t0()));
        assert_eq!(plan.started_batch, Some(1));
        assert_eq!(plan.total_batches, 4);
        let chosen: Vec<_> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::Choose { pod, batch } => (pod.as_str(), batch.as_str()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            chosen,
            [
                ("toll-edge-00", "1"),
                ("toll-edge-01", "1"),
                ("toll-edge-02", "1")
            ]
        );
    }

    #[test]
    fn the_batch_total_stays_put_while_batches_run() {
        let spec = spec(serde_json::json!({"batches": {"size": "10%"}}));
        let fresh = plan(&snapshot(&spec, nodes(20), 0, 0, t0()));
        assert_eq!((fresh.started_batch, fresh.total_batches), (Some(1), 10));
        // Batch 1 (2 targets) in flight: still 10 batches, not 1 + 10% of the 18 left.
        let targets: Vec<_> = nodes(20)
            .into_iter()
            .enumerate()
            .map(|(i, t)| if i < 2 { chosen(t, 1) } else { t })
            .collect();
        assert_eq!(
            plan(&snapshot(&spec, targets, 1, 2, t0())).total_batches,
            10
        );
        // Steps: counted from the step the next batch will use.
        let steps = spec_steps();
        let targets: Vec<_> = nodes(10)
            .into_iter()
            .enumerate()
            .map(|(i, t)| if i < 1 { chosen(t, 1) } else { t })
            .collect();
        assert_eq!(
            plan(&snapshot(&steps, targets, 1, 1, t0())).total_batches,
            3
        );
    }

    fn spec_steps() -> RolloutJobSpec {
        spec(serde_json::json!({"batches": {"steps": [{"size": 1}, {"size": "50%"}]}}))
    }

    #[test]
    fn pulls_respect_parallelism() {
        let spec = spec(serde_json::json!({"batches": {"size": 3}}));
        let targets: Vec<_> = nodes(10)
            .into_iter()
            .enumerate()
            .map(|(i, t)| if i < 3 { chosen(t, 1) } else { t })
            .collect();
        let plan = plan(&snapshot(&spec, targets, 1, 3, t0()));
        assert_eq!(kinds(&plan), ["prepull", "prepull"], "parallelism 2");
        assert_eq!(plan.started_batch, None);
    }

    #[test]
    fn only_a_pulled_node_is_swapped() {
        let spec = spec(serde_json::json!({"batches": {"size": 2}}));
        let failed = PullState::Failed {
            reason: "ErrImagePull".into(),
            message: "not found".into(),
        };
        let targets = vec![
            with_prepull(chosen(target("a", ""), 1), PullState::Pulled, 1),
            with_prepull(chosen(target("b", ""), 1), failed.clone(), 2),
        ];
        let plan = plan(&snapshot(&spec, targets, 1, 2, t0()));
        let swapped: Vec<_> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Swap { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(swapped, ["a"], "never swap a node whose pull failed");
        // b used its one retry: it is failed and its pre-pull pod goes.
        assert!(plan.actions.contains(&Action::Record {
            pod: "toll-b".into(),
            outcome: Outcome {
                kind: OutcomeKind::Failed,
                reason: "PullFailed".into(),
                message: "ErrImagePull: not found".into()
            },
        }));
        assert!(plan.actions.contains(&Action::DeletePrePull {
            name: "pp-b-2".into()
        }));
        assert_eq!(plan.failures.len(), 1);
    }

    #[test]
    fn a_failed_pull_is_retried_as_a_fresh_pod_and_a_stuck_one_times_out() {
        let spec = spec(serde_json::json!({"batches": {"size": 2}}));
        let failed = PullState::Failed {
            reason: "ImagePullBackOff".into(),
            message: String::new(),
        };
        let targets = vec![
            with_prepull(chosen(target("a", ""), 1), failed, 1),
            with_prepull(chosen(target("b", ""), 1), PullState::Pulling, 1),
        ];
        let plan = plan(&snapshot(&spec, targets, 1, 2, at(61)));
        assert_eq!(
            plan.actions
                .iter()
                .filter(|a| matches!(a, Action::PrePull { attempt: 2, .. }))
                .count(),
            2,
            "both retried: a failed, b timed out after 60s: {:?}",
            plan.actions
        );
    }

    #[test]
    fn a_swap_is_verified_after_min_ready_and_its_interruption_measured() {
        let spec = spec(serde_json::json!({"batches": {"size": 1}}));
        let mut t = with_prepull(chosen(target("a", ""), 1), PullState::Pulled, 1);
        t.prepull.as_mut().unwrap().swapped_at = Some(at(100));
        let mut new_pod = pod("a", NEW);
        new_pod.name = "toll-a-new".into();
        new_pod.ready_since = Some(at(103));
        t.pod = Some(new_pod);
        // minReadySeconds 5: not yet at 106...
        let early = plan(&snapshot(
            &spec,
            vec![t.clone(), target("b", "")],
            1,
            1,
            at(106),
        ));
        assert!(early.actions.is_empty(), "{:?}", early.actions);
        // ... done at 108: finish, and the next batch starts.
        let done = plan(&snapshot(&spec, vec![t, target("b", "")], 1, 1, at(108)));
        assert!(done.actions.contains(&Action::Finish {
            pod: "toll-a-new".into(),
            batch: "1".into(),
            prepull: "pp-a-1".into(),
            interruption: Some(SignedDuration::from_secs(3)),
        }));
        assert_eq!(done.started_batch, Some(2));
    }

    #[test]
    fn a_new_pod_never_ready_fails_the_target() {
        let spec = spec(serde_json::json!({"batches": {"size": 1}}));
        let mut t = with_prepull(chosen(target("a", ""), 1), PullState::Pulled, 1);
        t.prepull.as_mut().unwrap().swapped_at = Some(at(0));
        let mut new_pod = pod("a", NEW);
        new_pod.ready_since = None;
        t.pod = Some(new_pod);
        let plan = plan(&snapshot(&spec, vec![t], 1, 1, at(31)));
        assert!(
            plan.actions.iter().any(
                |a| matches!(a, Action::Record { outcome, .. } if outcome.reason == "NotReady")
            )
        );
    }

    #[test]
    fn an_exceeded_budget_starts_nothing_new() {
        let spec =
            spec(serde_json::json!({"batches": {"size": 2}, "failurePolicy": {"tolerance": 0}}));
        let mut failed = chosen(target("a", ""), 1);
        failed.pod.as_mut().unwrap().outcome = Some(Outcome {
            kind: OutcomeKind::Failed,
            reason: "PullFailed".into(),
            message: String::new(),
        });
        let targets = vec![
            failed,
            with_prepull(chosen(target("b", ""), 1), PullState::Pulled, 1),
            target("c", ""),
        ];
        let plan = plan(&snapshot(&spec, targets, 1, 2, t0()));
        assert!(plan.budget_exceeded);
        assert_eq!(kinds(&plan), Vec::<&str>::new(), "no swap, no new batch");
    }

    #[test]
    fn group_by_never_splits_a_group() {
        let spec = spec(serde_json::json!({"batches": {"size": 3, "groupBy": "station"}}));
        let targets = vec![
            target("a1", "s1"),
            target("a2", "s1"),
            target("b1", "s2"),
            target("b2", "s2"),
            target("c1", "s3"),
        ];
        let p = plan(&snapshot(&spec, targets, 0, 0, t0()));
        assert_eq!(
            kinds(&p),
            ["choose", "choose"],
            "s1 only: s1+s2 would be 4 > 3"
        );
        assert_eq!(p.total_batches, 2, "[s1], [s2 s3]");
        let big = spec_with_size(1);
        let targets = vec![target("a1", "s1"), target("a2", "s1"), target("b1", "s2")];
        let p = plan(&snapshot(&big, targets, 0, 0, t0()));
        assert_eq!(
            kinds(&p),
            ["choose", "choose"],
            "a group larger than the batch stays whole"
        );
    }

    fn spec_with_size(n: i32) -> RolloutJobSpec {
        spec(serde_json::json!({"batches": {"size": n, "groupBy": "station"}}))
    }

    #[test]
    fn offline_nodes_are_skipped_or_waited_for() {
        let skip = spec(serde_json::json!({"batches": {"size": 1}}));
        let mut t = chosen(target("a", ""), 1);
        t.node_ready = false;
        let p = plan(&snapshot(&skip, vec![t.clone()], 1, 1, t0()));
        assert!(
            matches!(&p.actions[..], [Action::Record { outcome, .. }] if outcome.kind == OutcomeKind::Skipped)
        );

        let wait = spec(
            serde_json::json!({"batches": {"size": 1}, "offlineNodes": {"action": "Wait", "waitSeconds": 60}}),
        );
        let p = plan(&snapshot(
            &wait,
            vec![t.clone(), target("b", "")],
            1,
            1,
            at(10),
        ));
        assert_eq!(
            kinds(&p),
            ["choose"],
            "waiting does not hold the next batch back"
        );
        assert!(!p.complete);
        let p = plan(&snapshot(&wait, vec![t], 1, 1, at(61)));
        assert!(
            matches!(&p.actions[..], [Action::Record { outcome, .. }] if outcome.reason == "NodeOffline")
        );
    }

    #[test]
    fn a_restart_mid_choice_completes_the_same_batch() {
        let spec = spec(serde_json::json!({"batches": {"size": 3}}));
        let targets: Vec<_> = nodes(6)
            .into_iter()
            .enumerate()
            .map(|(i, t)| if i == 0 { chosen(t, 1) } else { t })
            .collect();
        let p = plan(&snapshot(&spec, targets, 1, 3, t0()));
        let chosen: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Choose { pod, batch } => Some((pod.as_str(), batch.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(chosen, [("toll-edge-01", "1"), ("toll-edge-02", "1")]);
        assert_eq!(p.started_batch, None);
    }

    #[test]
    fn paused_finishes_work_in_flight_but_starts_nothing() {
        let spec = spec(serde_json::json!({"batches": {"size": 2}}));
        let mut done = with_prepull(chosen(target("a", ""), 1), PullState::Pulled, 1);
        done.prepull.as_mut().unwrap().swapped_at = Some(t0());
        done.pod = Some(pod("a", NEW));
        let pulled = with_prepull(chosen(target("b", ""), 1), PullState::Pulled, 1);
        let mut snap = snapshot(&spec, vec![done, pulled, target("c", "")], 1, 2, at(60));
        snap.hold = true;
        let p = plan(&snap);
        assert_eq!(kinds(&p), ["finish"]);
    }

    #[test]
    fn done_when_every_target_is_terminal() {
        let spec = spec(serde_json::json!({}));
        let mut skipped = target("b", "");
        skipped.pod.as_mut().unwrap().outcome = Some(Outcome {
            kind: OutcomeKind::Skipped,
            reason: "NodeOffline".into(),
            message: String::new(),
        });
        let mut t = target("a", "");
        t.pod = Some(pod("a", NEW));
        let p = plan(&snapshot(&spec, vec![t, skipped], 1, 1, at(60)));
        assert!(p.complete);
        assert_eq!((p.counts.updated, p.counts.skipped), (1, 1));
    }

    /// Catch-up: a node skipped while offline is reopened (so pre-pulled in a batch of its
    /// own) when it is back within the window; one still offline keeps the job waiting; after
    /// the window the job completes with it behind. Never a swap without a pull.
    #[test]
    fn offline_targets_are_caught_up_within_the_window() {
        // A failure counts against the budget: tolerate it, so the job is active.
        let spec = spec(serde_json::json!({"failurePolicy": {"tolerance": 1}}));
        let offline = |reason: &str, kind: OutcomeKind, ready: bool| {
            let mut t = chosen(target("b", ""), 1);
            t.node_ready = ready;
            t.pod.as_mut().unwrap().outcome = Some(Outcome {
                kind,
                reason: reason.into(),
                message: String::new(),
            });
            t
        };
        let mut done = chosen(target("a", ""), 1);
        done.pod.as_mut().unwrap().image = NEW.into();
        // (reason, outcome, node ready, window open) -> (actions, catching up, complete)
        let cases = [
            (
                "NodeOffline",
                OutcomeKind::Skipped,
                true,
                true,
                vec!["reopen"],
                1,
                false,
            ),
            (
                "NodeOffline",
                OutcomeKind::Failed,
                true,
                true,
                vec!["reopen"],
                1,
                false,
            ),
            (
                "NodeOffline",
                OutcomeKind::Skipped,
                false,
                true,
                vec![],
                1,
                false,
            ),
            (
                "NodeOffline",
                OutcomeKind::Skipped,
                true,
                false,
                vec![],
                0,
                true,
            ),
            (
                "PullFailed",
                OutcomeKind::Failed,
                true,
                true,
                vec![],
                0,
                true,
            ),
            ("Blocked", OutcomeKind::Skipped, true, true, vec![], 0, true),
        ];
        for (reason, kind, ready, open, actions, waiting, complete) in cases {
            let targets = vec![done.clone(), offline(reason, kind, ready)];
            let mut snap = snapshot(&spec, targets, 1, 2, at(60));
            snap.catch_up_open = open;
            let p = plan(&snap);
            let case = format!("{reason} {kind:?} ready={ready} open={open}");
            assert_eq!(kinds(&p), actions, "{case}");
            assert_eq!((p.catching_up, p.complete), (waiting, complete), "{case}");
            assert!(p.all_terminal, "{case}");
        }
        // Reopened (outcome cleared): chosen in its batch again, so it pulls first.
        let back = chosen(target("b", ""), 1);
        let mut snap = snapshot(&spec, vec![done.clone(), back], 1, 2, at(60));
        snap.catch_up_open = true;
        let p = plan(&snap);
        assert_eq!(kinds(&p), ["prepull"]);
        assert!(!p.complete);
        // Held or stopping: nothing reopened.
        let mut snap = snapshot(
            &spec,
            vec![done, offline("NodeOffline", OutcomeKind::Skipped, true)],
            1,
            2,
            at(60),
        );
        snap.catch_up_open = true;
        snap.hold = true;
        assert!(plan(&snap).actions.is_empty());
    }

    #[test]
    fn a_node_gone_offline_before_its_swap_is_skipped_not_failed() {
        let spec = spec(serde_json::json!({"batches": {"size": 2}}));
        for state in [PullState::Pulling, PullState::Pulled] {
            let mut t = with_prepull(chosen(target("a", ""), 1), state.clone(), 1);
            t.node_ready = false;
            let p = plan(&snapshot(&spec, vec![t], 1, 1, at(5)));
            assert_eq!(kinds(&p), ["record", "delete-pp"], "{state:?}");
            assert!(
                matches!(&p.failures[..], [(_, o)] if o.kind == OutcomeKind::Skipped && o.reason == NODE_OFFLINE),
                "{:?}",
                p.failures
            );
        }
    }

    #[test]
    fn a_step_pause_is_never_skipped_in_the_reconcile_that_finishes_its_batch() {
        let spec = spec(
            serde_json::json!({"batches": {"steps": [{"size": 1, "pause": {}}, {"size": 1}]}}),
        );
        let mut done = target("a", "");
        done.pod = Some(pod("a", NEW));
        done.pod.as_mut().unwrap().batch = Some("1".into());
        let snap = snapshot(&spec, vec![done, target("b", "")], 1, 1, at(60));
        let p = plan(&snap);
        assert!(p.current_batch_done);
        assert_eq!(p.started_batch, None);
        // Once the finish is recorded (and the pause released), the next batch starts.
        let mut later = snap.clone();
        later.step_pause_pending = false;
        assert_eq!(plan(&later).started_batch, Some(2));
    }

    #[test]
    fn without_prepull_the_swap_starts_at_once_with_a_record_of_it() {
        let spec = spec(serde_json::json!({"batches": {"size": 2}, "prePull": {"enabled": false}}));
        let targets = vec![chosen(target("a", ""), 1), chosen(target("b", ""), 1)];
        let p = plan(&snapshot(&spec, targets, 1, 2, t0()));
        assert!(
            p.actions
                .iter()
                .all(|a| matches!(a, Action::PrePull { swap: true, image, .. } if image == OLD)),
            "{:?}",
            p.actions
        );
        // With the record in place the old pod goes, whatever the record pod's own state.
        let mut marked = with_prepull(chosen(target("a", ""), 1), PullState::Pulling, 1);
        marked.prepull.as_mut().unwrap().swapped_at = Some(t0());
        let p = plan(&snapshot(&spec, vec![marked], 1, 1, t0()));
        assert_eq!(kinds(&p), ["swap"]);
    }
}

#[cfg(test)]
mod workloads {
    use super::*;

    const NEW: &str = "db:2";
    const OLD: &str = "db:1";

    fn spec(kind: &str, extra: serde_json::Value) -> RolloutJobSpec {
        let mut base = serde_json::json!({
            "target": {"kind": kind, "selector": {"matchLabels": {"app": "db"}}},
            "image": NEW,
            "prePull": {"parallelism": 10, "retries": 0, "timeoutSeconds": 60},
            "verify": {"readyTimeoutSeconds": 30, "minReadySeconds": 5},
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn t0() -> Timestamp {
        "2026-11-21T10:00:00Z".parse().unwrap()
    }

    fn view(name: &str, image: &str, batch: Option<&str>) -> PodView {
        PodView {
            name: name.into(),
            uid: format!("uid-{name}"),
            image: image.into(),
            created: t0(),
            ready_since: Some(t0()),
            batch: batch.map(Into::into),
            chosen_at: batch.map(|_| t0()),
            outcome: None,
            terminating: false,
        }
    }

    fn pulled(name: &str, state: PullState) -> PrePullView {
        PrePullView {
            name: name.into(),
            batch: "1".into(),
            attempt: 1,
            created: t0(),
            state,
            swapped_at: None,
            outcome: None,
        }
    }

    /// Ordinal `n` of StatefulSet db (partition 4), on node `edge-<n>`.
    fn ordinal(n: i32, partition: i32, pod: PodView, prepull: Option<PrePullView>) -> Target {
        Target {
            workload: "StatefulSet/db".into(),
            node: format!("edge-{n}"),
            image: NEW.into(),
            group: String::new(),
            node_ready: true,
            pod: Some(pod),
            prepull,
            slot: Slot::Ordinal {
                statefulset: "db".into(),
                ordinal: n,
                partition: Some(partition),
            },
        }
    }

    fn snapshot(spec: &RolloutJobSpec, mut targets: Vec<Target>, batch: i32) -> Snapshot<'_> {
        order_targets(&mut targets);
        let size = i64::try_from(targets.len()).unwrap();
        Snapshot {
            spec,
            direction: Direction::FORWARD,
            targets,
            current_batch: batch,
            current_batch_size: if batch == 0 { 0 } else { size },
            hold: false,
            stop: false,
            step_pause_pending: true,
            catch_up_open: false,
            now: t0() + SignedDuration::from_secs(10),
        }
    }

    #[test]
    fn ordinals_are_batched_from_the_highest_down() {
        let spec = spec("StatefulSet", serde_json::json!({"batches": {"size": 2}}));
        let targets = (0..4)
            .map(|n| ordinal(n, 4, view(&format!("db-{n}"), OLD, None), None))
            .collect();
        let p = plan(&snapshot(&spec, targets, 0));
        let chosen: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Choose { pod, .. } => Some(pod.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(chosen, ["db-3", "db-2"]);
        assert_eq!(p.total_batches, 2);
    }

    #[test]
    fn the_partition_passes_one_verified_ordinal_at_a_time() {
        let spec = spec("StatefulSet", serde_json::json!({"batches": {"size": 4}}));
        let chosen = |n: i32, partition| {
            ordinal(
                n,
                partition,
                view(&format!("db-{n}"), OLD, Some("1")),
                Some(pulled(&format!("pp-{n}"), PullState::Pulled)),
            )
        };
        // Every ordinal pulled: only the highest is swapped.
        let targets = (0..4).map(|n| chosen(n, 4)).collect();
        let p = plan(&snapshot(&spec, targets, 1));
        assert_eq!(
            p.actions,
            [Action::LowerPartition {
                statefulset: "db".into(),
                from: 4,
                to: 3,
                prepull: Some(("pp-3".into(), t0())),
            }]
        );
        // db-3 on the new image but not Ready for minReadySeconds yet: db-2 waits.
        let mut swapped = chosen(3, 3);
        swapped.pod = Some(view("db-3", NEW, None));
        swapped.pod.as_mut().unwrap().ready_since = Some(t0() + SignedDuration::from_secs(8));
        swapped.prepull.as_mut().unwrap().swapped_at = Some(t0());
        let mut targets: Vec<_> = (0..3).map(|n| chosen(n, 3)).collect();
        targets.push(swapped.clone());
        assert!(plan(&snapshot(&spec, targets, 1)).actions.is_empty());
        // Verified: it is finished, with its interruption, and db-2 goes next.
        swapped.pod.as_mut().unwrap().ready_since = Some(t0() + SignedDuration::from_secs(2));
        let mut targets: Vec<_> = (0..3).map(|n| chosen(n, 3)).collect();
        targets.push(swapped);
        let p = plan(&snapshot(&spec, targets, 1));
        assert!(p.actions.contains(&Action::Finish {
            pod: "db-3".into(),
            batch: "1".into(),
            prepull: "pp-3".into(),
            interruption: Some(SignedDuration::from_secs(2)),
        }));
        assert!(p.actions.contains(&Action::LowerPartition {
            statefulset: "db".into(),
            from: 3,
            to: 2,
            prepull: Some(("pp-2".into(), t0())),
        }));
    }

    #[test]
    fn an_ordinal_not_updated_blocks_every_ordinal_below_it() {
        let spec = spec(
            "StatefulSet",
            serde_json::json!({"batches": {"size": 4}, "failurePolicy": {"tolerance": 1}}),
        );
        let mut failed = ordinal(3, 4, view("db-3", OLD, Some("1")), None);
        failed.pod.as_mut().unwrap().outcome = Some(Outcome {
            kind: OutcomeKind::Failed,
            reason: "PullFailed".into(),
            message: String::new(),
        });
        let targets = vec![
            failed,
            ordinal(
                2,
                4,
                view("db-2", OLD, Some("1")),
                Some(pulled("pp-2", PullState::Pulled)),
            ),
            ordinal(1, 4, view("db-1", OLD, Some("1")), None),
        ];
        let p = plan(&snapshot(&spec, targets, 1));
        assert!(
            !p.actions
                .iter()
                .any(|a| matches!(a, Action::LowerPartition { .. } | Action::PrePull { .. })),
            "{:?}",
            p.actions
        );
        let blocked: Vec<_> = p
            .failures
            .iter()
            .map(|(t, o)| {
                (
                    t.pod.as_ref().unwrap().name.as_str(),
                    o.reason.as_str(),
                    o.kind,
                )
            })
            .collect();
        assert_eq!(
            blocked,
            [
                ("db-2", "Blocked", OutcomeKind::Skipped),
                ("db-1", "Blocked", OutcomeKind::Skipped)
            ]
        );
        assert!(p.actions.contains(&Action::DeletePrePull {
            name: "pp-2".into()
        }));
    }

    fn deployment(name: &str, nodes: &[(&str, Option<PullState>)], batch: Option<&str>) -> Target {
        Target {
            workload: format!("Deployment/{name}"),
            node: nodes[0].0.into(),
            image: NEW.into(),
            group: String::new(),
            node_ready: true,
            pod: Some(view(name, OLD, batch)),
            prepull: None,
            slot: Slot::Workload {
                deployment: name.into(),
                pulls: nodes
                    .iter()
                    .map(|(node, state)| NodePull {
                        node: (*node).into(),
                        node_ready: true,
                        prepull: state
                            .clone()
                            .map(|s| pulled(&format!("pp-{name}-{node}"), s)),
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn a_deployment_pulls_on_each_of_its_nodes_then_is_patched_once() {
        let spec = spec("Deployment", serde_json::json!({"batches": {"size": 1}}));
        let fresh = deployment("api", &[("a", None), ("b", None)], Some("1"));
        let p = plan(&snapshot(&spec, vec![fresh], 1));
        let slots: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::PrePull { slot, node, .. } => Some((node.as_str(), slot.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            slots,
            [
                ("a", Some("Deployment/api@a".to_string())),
                ("b", Some("Deployment/api@b".to_string()))
            ]
        );
        let half = deployment(
            "api",
            &[
                ("a", Some(PullState::Pulled)),
                ("b", Some(PullState::Pulling)),
            ],
            Some("1"),
        );
        assert!(plan(&snapshot(&spec, vec![half], 1)).actions.is_empty());
        let all = deployment(
            "api",
            &[
                ("a", Some(PullState::Pulled)),
                ("b", Some(PullState::Pulled)),
            ],
            Some("1"),
        );
        assert_eq!(
            plan(&snapshot(&spec, vec![all], 1)).actions,
            [Action::SetImage {
                deployment: "api".into(),
                image: NEW.into()
            }]
        );
    }

    #[test]
    fn a_deployment_with_a_node_that_cannot_pull_fails_whole_and_is_never_patched() {
        let spec = spec("Deployment", serde_json::json!({"batches": {"size": 1}}));
        let failed = PullState::Failed {
            reason: "ErrImagePull".into(),
            message: "not found".into(),
        };
        let t = deployment(
            "api",
            &[("a", Some(PullState::Pulled)), ("b", Some(failed))],
            Some("1"),
        );
        let mut snap = snapshot(&spec, vec![t, deployment("web", &[("c", None)], None)], 1);
        snap.current_batch_size = 1;
        let p = plan(&snap);
        assert!(
            !p.actions
                .iter()
                .any(|a| matches!(a, Action::SetImage { .. } | Action::Choose { .. })),
            "{:?}",
            p.actions
        );
        assert!(p.actions.iter().any(|a| matches!(a,
            Action::Record { pod, outcome } if pod == "api" && outcome.reason == "PullFailed"
                && outcome.message.contains("node b"))));
        for name in ["pp-api-a", "pp-api-b"] {
            assert!(
                p.actions
                    .contains(&Action::DeletePrePull { name: name.into() })
            );
        }
        assert_eq!(p.started_batch, None);
        // Recorded, the failure breaks the budget (tolerance 0): web is never started.
        let mut recorded = snap.clone();
        let d = recorded.targets[0].pod.as_mut().unwrap();
        d.outcome = Some(Outcome {
            kind: OutcomeKind::Failed,
            reason: "PullFailed".into(),
            message: String::new(),
        });
        let p = plan(&recorded);
        assert!(p.budget_exceeded);
        assert_eq!(p.started_batch, None);
    }

    #[test]
    fn a_deployment_is_done_once_its_rollout_is_complete_for_min_ready() {
        let spec = spec("Deployment", serde_json::json!({"batches": {"size": 1}}));
        let mut t = deployment("api", &[("a", Some(PullState::Pulled))], Some("1"));
        let d = t.pod.as_mut().unwrap();
        d.image = NEW.into();
        d.ready_since = None;
        // Patched, rollout not complete yet: waiting, until the ready timeout (30s) fails it.
        let mut snap = snapshot(&spec, vec![t.clone()], 1);
        assert!(plan(&snap).actions.is_empty());
        snap.now = t0() + SignedDuration::from_secs(31);
        assert!(
            plan(&snap).actions.iter().any(
                |a| matches!(a, Action::Record { outcome, .. } if outcome.reason == "NotReady")
            )
        );
        // Complete since t0 + 4s: verified at t0 + 10s (minReadySeconds 5), pulls dropped.
        t.pod.as_mut().unwrap().ready_since = Some(t0() + SignedDuration::from_secs(4));
        let p = plan(&snapshot(&spec, vec![t], 1));
        assert!(p.complete);
        assert_eq!(
            p.actions,
            [Action::DeletePrePull {
                name: "pp-api-a".into()
            }]
        );
    }
}

#[cfg(test)]
mod counting {
    use super::*;

    #[test]
    fn finished_targets_stay_counted_as_pre_pulled() {
        let spec: RolloutJobSpec = serde_json::from_value(serde_json::json!({
            "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll"}}},
            "image": "toll:2",
        }))
        .unwrap();
        let now: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let t = Target {
            workload: "DaemonSet/toll".into(),
            node: "a".into(),
            image: "toll:2".into(),
            group: String::new(),
            node_ready: true,
            pod: Some(PodView {
                name: "p".into(),
                uid: "u".into(),
                image: "toll:2".into(),
                created: now,
                ready_since: Some(now),
                batch: Some("1".into()),
                chosen_at: Some(now),
                outcome: None,
                terminating: false,
            }),
            prepull: None,
            slot: Slot::Node,
        };
        let snap = Snapshot {
            spec: &spec,
            direction: Direction::FORWARD,
            targets: vec![t],
            current_batch: 1,
            current_batch_size: 1,
            hold: false,
            stop: false,
            step_pause_pending: false,
            catch_up_open: false,
            now: now + SignedDuration::from_secs(10),
        };
        assert_eq!(plan(&snap).counts.pre_pulled, 1);
    }
}
