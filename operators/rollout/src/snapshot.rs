//! Read step: turn the cached pods and nodes into the plan's [`Target`]s. Pure functions over
//! objects, so they are tested without a cluster; the caches themselves live in the controller.

use edgefleet_api::rollout::{RolloutJob, keys};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::cached::{CachedNode, CachedPod};
use crate::plan::{Direction, NodePull, Outcome, OutcomeKind, PodView, PrePullView, Slot, Target};
use crate::prepull;

/// The container a job updates in a pod template: the named one, or the only one.
pub fn target_container(
    containers: &[k8s_openapi::api::core::v1::Container],
    wanted: Option<&str>,
) -> Result<String, String> {
    match wanted {
        Some(name) if containers.iter().any(|c| c.name == name) => Ok(name.to_string()),
        Some(name) => Err(format!("has no container named {name:?}")),
        None if containers.len() == 1 => Ok(containers[0].name.clone()),
        None => Err(format!(
            "has {} containers: set spec.target.container",
            containers.len()
        )),
    }
}

/// The image of `container` in a pod template or pod spec.
pub fn container_image(
    containers: &[k8s_openapi::api::core::v1::Container],
    container: &str,
) -> Option<String> {
    containers
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| c.image.clone())
}

/// Does the node carry every label of `selector`?
pub fn node_matches(node: &CachedNode, selector: Option<&BTreeMap<String, String>>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels = node.labels();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Parses `<uid>/<rest>` annotations of this job; other jobs' values are ignored.
fn ours<'a>(value: Option<&'a String>, job_uid: &str) -> Option<&'a str> {
    value?.strip_prefix(job_uid)?.strip_prefix('/')
}

/// `TARGET_BATCH_ANNOTATION` value: `<uid>/<batch key>@<RFC 3339>`.
pub fn batch_annotation(job_uid: &str, batch: &str, at: Timestamp) -> String {
    format!("{job_uid}/{batch}@{at}")
}

/// `TARGET_OUTCOME_ANNOTATION` value: `<uid>/<direction prefix><Failed|Skipped>/<Reason>:
/// <message>` — a forward failure does not count against a rollback.
pub fn outcome_annotation(job_uid: &str, dir: &Direction, outcome: &Outcome) -> String {
    let kind = match outcome.kind {
        OutcomeKind::Failed => "Failed",
        OutcomeKind::Skipped => "Skipped",
    };
    format!(
        "{job_uid}/{}{kind}/{}: {}",
        dir.batch_prefix, outcome.reason, outcome.message
    )
}

fn parse_outcome(value: &str, dir: &Direction) -> Option<Outcome> {
    let value = value.strip_prefix(dir.batch_prefix)?;
    // A forward outcome must not read as one of the rollback's `rb-` outcomes' prefix.
    if dir.batch_prefix.is_empty() && value.starts_with("rb-") {
        return None;
    }
    let (kind, rest) = value.split_once('/')?;
    let kind = match kind {
        "Failed" => OutcomeKind::Failed,
        "Skipped" => OutcomeKind::Skipped,
        _ => return None,
    };
    let (reason, message) = rest.split_once(": ").unwrap_or((rest, ""));
    Some(Outcome {
        kind,
        reason: reason.to_string(),
        message: message.to_string(),
    })
}

fn time_of(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<Timestamp> {
    t.map(|t| t.0)
}

/// This job's batch mark (batch key, when chosen) and outcome in an object's annotations.
type Marks = (Option<String>, Option<Timestamp>, Option<Outcome>);

fn marks(annotations: &BTreeMap<String, String>, job_uid: &str, dir: &Direction) -> Marks {
    let (batch, chosen_at) = match ours(annotations.get(keys::TARGET_BATCH_ANNOTATION), job_uid) {
        Some(v) => {
            let (key, at) = v.split_once('@').unwrap_or((v, ""));
            (Some(key.to_string()), at.parse::<Timestamp>().ok())
        }
        None => (None, None),
    };
    let outcome = ours(annotations.get(keys::TARGET_OUTCOME_ANNOTATION), job_uid)
        .and_then(|v| parse_outcome(v, dir));
    (batch, chosen_at, outcome)
}

/// Since when the pod is Ready, if it is.
fn ready_since(pod: &CachedPod) -> Option<Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .map(|c| time_of(c.last_transition_time.as_ref()).unwrap_or_default())
}

/// A workload pod as the plan sees it.
pub fn pod_view(pod: &CachedPod, container: &str, job_uid: &str, dir: &Direction) -> PodView {
    let (batch, chosen_at, outcome) = marks(pod.annotations(), job_uid, dir);
    let ready_since = ready_since(pod);
    PodView {
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        image: pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == container))
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        created: time_of(pod.metadata.creation_timestamp.as_ref()).unwrap_or_default(),
        ready_since,
        batch,
        chosen_at,
        outcome,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// A pre-pull pod as the plan sees it.
pub fn prepull_view(pod: &CachedPod, job_uid: &str, dir: &Direction) -> PrePullView {
    let annotations = pod.annotations();
    PrePullView {
        name: pod.name_any(),
        batch: pod
            .labels()
            .get(keys::BATCH_LABEL)
            .cloned()
            .unwrap_or_default(),
        attempt: annotations
            .get(keys::ATTEMPT_ANNOTATION)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1),
        created: time_of(pod.metadata.creation_timestamp.as_ref()).unwrap_or_default(),
        state: prepull::pull_state(pod),
        swapped_at: annotations
            .get(keys::SWAPPED_AT_ANNOTATION)
            .and_then(|t| t.parse().ok()),
        outcome: ours(annotations.get(keys::TARGET_OUTCOME_ANNOTATION), job_uid)
            .and_then(|v| parse_outcome(v, dir)),
    }
}

/// The job's pre-pull pods by slot — the node for DaemonSet targets, the
/// `TARGET_SLOT_ANNOTATION` for the others — (the newest attempt per slot), and those of the
/// other direction (to clean up).
pub fn prepull_pods<'a>(
    pods: &'a [Arc<CachedPod>],
    job: &RolloutJob,
    direction: &Direction,
) -> (HashMap<String, &'a CachedPod>, Vec<&'a CachedPod>) {
    let uid = job.uid().unwrap_or_default();
    let mut by_node: HashMap<String, &CachedPod> = HashMap::new();
    let mut other = Vec::new();
    for pod in pods {
        let labels = pod.labels();
        if labels.get(keys::JOB_UID_LABEL) != Some(&uid) || pod.namespace() != job.namespace() {
            continue;
        }
        let batch = labels
            .get(keys::BATCH_LABEL)
            .map(String::as_str)
            .unwrap_or("");
        if direction.batch_number(batch).is_none() {
            other.push(pod.as_ref());
            continue;
        }
        let annotations = pod.annotations();
        let Some(node) = annotations
            .get(keys::TARGET_SLOT_ANNOTATION)
            .or(annotations.get(keys::NODE_ANNOTATION))
            .cloned()
        else {
            continue;
        };
        let attempt = |p: &CachedPod| -> i32 {
            p.annotations()
                .get(keys::ATTEMPT_ANNOTATION)
                .and_then(|a| a.parse().ok())
                .unwrap_or(1)
        };
        match by_node.get(&node) {
            Some(existing) if attempt(existing) >= attempt(pod) => other.push(pod.as_ref()),
            Some(existing) => {
                other.push(existing);
                by_node.insert(node, pod.as_ref());
            }
            None => {
                by_node.insert(node, pod.as_ref());
            }
        }
    }
    (by_node, other)
}

#[cfg(test)]
use edgefleet_kit::pods::intended_node;

/// The labels a DaemonSet's pods require of their node (its template's `nodeSelector`).
fn daemonset_node_selector(ds: &DaemonSet) -> Option<&BTreeMap<String, String>> {
    ds.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .node_selector
        .as_ref()
}

/// The targets of one DaemonSet: one per node its pods run on (or our swap is in flight on),
/// each to end on `image`.
#[allow(clippy::too_many_arguments)]
pub fn daemonset_targets(
    ds: &DaemonSet,
    container: &str,
    image: &str,
    dir: &Direction,
    job: &RolloutJob,
    pods: &[Arc<CachedPod>],
    nodes: &HashMap<String, Arc<CachedNode>>,
    prepulls: &HashMap<String, &CachedPod>,
) -> Vec<Target> {
    let uid = job.uid().unwrap_or_default();
    let ds_uid = ds.uid().unwrap_or_default();
    let workload = format!("DaemonSet/{}", ds.name_any());
    let group_by = job.spec.batches.group_by.as_deref();
    let node_selector = job.spec.node_selector.as_ref();

    // The workload's pod per node: a live one over a terminating one.
    let mut by_node: BTreeMap<String, &CachedPod> = BTreeMap::new();
    for pod in pods {
        let owned = pod
            .owner_references()
            .iter()
            .any(|o| o.uid == ds_uid && o.controller == Some(true));
        let Some(node) = pod.intended_node() else {
            continue;
        };
        if !owned {
            continue;
        }
        let better = match by_node.get(&node) {
            None => true,
            Some(existing) => {
                existing.metadata.deletion_timestamp.is_some()
                    && pod.metadata.deletion_timestamp.is_none()
            }
        };
        if better {
            by_node.insert(node, pod.as_ref());
        }
    }
    // A node where our swap is in flight has a pre-pull pod but maybe no workload pod. The
    // job's pre-pull pods serve every DaemonSet it drives: only nodes this one runs on count
    // (else another DaemonSet's swaps would read as phantom targets of this one).
    let mut node_names: Vec<&String> = by_node.keys().collect();
    for node in prepulls.keys() {
        if !by_node.contains_key(node)
            && nodes
                .get(node)
                .is_some_and(|n| node_matches(n, daemonset_node_selector(ds)))
        {
            node_names.push(node);
        }
    }

    let mut targets = Vec::new();
    for node_name in node_names {
        let node = nodes.get(node_name);
        // A node the cache does not know cannot be shown to match: never widen the selector.
        if node_selector.is_some() && !node.is_some_and(|n| node_matches(n, node_selector)) {
            continue;
        }
        let pod = by_node
            .get(node_name)
            .map(|p| pod_view(p, container, &uid, dir));
        let prepull = prepulls.get(node_name).map(|p| prepull_view(p, &uid, dir));
        if pod.is_none() && prepull.as_ref().is_none_or(|p| p.swapped_at.is_none()) {
            continue;
        }
        targets.push(Target {
            workload: workload.clone(),
            node: node_name.clone(),
            image: image.to_string(),
            group: group_by
                .and_then(|key| node.and_then(|n| n.labels().get(key).cloned()))
                .unwrap_or_default(),
            node_ready: node.is_some_and(|n| n.ready()),
            current: pod,
            prepull,
            slot: Slot::Node,
        });
    }
    targets
}

/// Pods a workload controls (directly, or through its ReplicaSets for a Deployment).
fn owned_pods<'a>(pods: &'a [Arc<CachedPod>], owner_uids: &[String]) -> Vec<&'a CachedPod> {
    pods.iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && owner_uids.contains(&o.uid))
        })
        .map(AsRef::as_ref)
        .collect()
}

/// The group of a workload whose pods run on `pod_nodes`: the first (in order) of their
/// nodes' groupBy values, so a workload spanning groups goes with the first one.
fn workload_group<'a>(
    pod_nodes: impl Iterator<Item = &'a String>,
    nodes: &HashMap<String, Arc<CachedNode>>,
    group_by: Option<&str>,
) -> String {
    let Some(key) = group_by else {
        return String::new();
    };
    pod_nodes
        .filter_map(|n| nodes.get(n)?.labels().get(key).cloned())
        .min()
        .unwrap_or_default()
}

/// Do all these nodes match the job's nodeSelector? A StatefulSet or Deployment is updated
/// whole, so it is a target only when every node its pods run on is in the node group.
fn all_match<'a>(
    mut pod_nodes: impl Iterator<Item = &'a String>,
    nodes: &HashMap<String, Arc<CachedNode>>,
    selector: Option<&BTreeMap<String, String>>,
) -> bool {
    // A node the cache does not know cannot be shown to match: never widen the selector.
    selector.is_none()
        || pod_nodes.all(|n| {
            nodes
                .get(n)
                .is_some_and(|node| node_matches(node, selector))
        })
}

/// The ordinal of a StatefulSet pod, from its name.
fn ordinal_of(pod: &str, statefulset: &str) -> Option<i32> {
    pod.strip_prefix(statefulset)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// The targets of one StatefulSet: one per ordinal below its replicas, each to end on `image`.
#[allow(clippy::too_many_arguments)]
pub fn statefulset_targets(
    sts: &StatefulSet,
    partition: Option<i32>,
    container: &str,
    image: &str,
    dir: &Direction,
    job: &RolloutJob,
    pods: &[Arc<CachedPod>],
    nodes: &HashMap<String, Arc<CachedNode>>,
    prepulls: &HashMap<String, &CachedPod>,
) -> Vec<Target> {
    let uid = job.uid().unwrap_or_default();
    let name = sts.name_any();
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut by_ordinal: BTreeMap<i32, &CachedPod> = BTreeMap::new();
    for pod in owned_pods(pods, &[sts.uid().unwrap_or_default()]) {
        let Some(ordinal) = ordinal_of(&pod.name_any(), &name) else {
            continue;
        };
        let better = by_ordinal.get(&ordinal).is_none_or(|existing| {
            existing.metadata.deletion_timestamp.is_some()
                && pod.metadata.deletion_timestamp.is_none()
        });
        if better {
            by_ordinal.insert(ordinal, pod);
        }
    }
    let pod_nodes: Vec<String> = by_ordinal
        .values()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    if !all_match(pod_nodes.iter(), nodes, job.spec.node_selector.as_ref()) {
        return Vec::new();
    }
    let group = workload_group(
        pod_nodes.iter(),
        nodes,
        job.spec.batches.group_by.as_deref(),
    );
    let mut targets = Vec::new();
    for ordinal in 0..replicas {
        let pod = by_ordinal.get(&ordinal);
        let prepull = prepulls
            .get(&Slot::ordinal_key(&name, ordinal))
            .map(|p| prepull_view(p, &uid, dir));
        if pod.is_none() && prepull.as_ref().is_none_or(|p| p.swapped_at.is_none()) {
            continue;
        }
        let node = pod
            .and_then(|p| p.spec.as_ref()?.node_name.clone())
            .or_else(|| {
                prepulls
                    .get(&Slot::ordinal_key(&name, ordinal))
                    .and_then(|p| p.annotations().get(keys::NODE_ANNOTATION).cloned())
            })
            .unwrap_or_default();
        targets.push(Target {
            workload: format!("StatefulSet/{name}"),
            node_ready: nodes.get(&node).is_some_and(|n| n.ready()),
            node,
            image: image.to_string(),
            group: group.clone(),
            current: pod.map(|p| pod_view(p, container, &uid, dir)),
            prepull,
            slot: Slot::Ordinal {
                statefulset: name.clone(),
                ordinal,
                partition,
            },
        });
    }
    targets
}

/// Is the pod one of the Deployment's? Its ReplicaSet owner is named `<deployment>-<its
/// pod-template-hash>`, which tells `api` from `api-v2` without reading ReplicaSets.
pub fn deployment_pod(pod: &CachedPod, deployment: &str) -> bool {
    let Some(hash) = pod.labels().get("pod-template-hash") else {
        return false;
    };
    let rs = format!("{deployment}-{hash}");
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "ReplicaSet" && o.name == rs)
}

/// Is the Deployment's rollout complete: its controller saw the latest spec, and every
/// replica is updated, Ready and available, with no old one left?
pub fn rolled_out(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = &d.status else {
        return false;
    };
    s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && s.replicas.unwrap_or(0) == want
        && s.updated_replicas.unwrap_or(0) == want
        && s.ready_replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
}

/// The target of one Deployment (none when its pods leave the job's node group).
#[allow(clippy::too_many_arguments)]
pub fn deployment_target(
    d: &Deployment,
    container: &str,
    image: &str,
    dir: &Direction,
    job: &RolloutJob,
    pods: &[Arc<CachedPod>],
    nodes: &HashMap<String, Arc<CachedNode>>,
    prepulls: &HashMap<String, &CachedPod>,
) -> Option<Target> {
    let uid = job.uid().unwrap_or_default();
    let name = d.name_any();
    let live: Vec<&CachedPod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && deployment_pod(p, &name))
        .map(AsRef::as_ref)
        .collect();
    let pod_nodes: std::collections::BTreeSet<String> = live
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    if !all_match(pod_nodes.iter(), nodes, job.spec.node_selector.as_ref()) {
        return None;
    }
    let template_image = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| container_image(&s.containers, container))
        .unwrap_or_default();
    let annotations = d.annotations();
    let (batch, chosen_at, outcome) = marks(annotations, &uid, dir);
    let swapped_at = annotations
        .get(keys::SWAPPED_AT_ANNOTATION)
        .and_then(|v| v.strip_prefix(uid.as_str())?.strip_prefix('@'))
        .and_then(|t| t.parse::<Timestamp>().ok());
    // Ready once the rollout is complete, since its last pod became Ready.
    let ready_since = rolled_out(d).then(|| {
        live.iter()
            .filter_map(|p| ready_since(p))
            .max()
            .or(swapped_at)
            .unwrap_or_default()
    });
    let view = PodView {
        name: name.clone(),
        uid: d.uid().unwrap_or_default(),
        image: template_image,
        created: swapped_at
            .or(time_of(d.metadata.creation_timestamp.as_ref()))
            .unwrap_or_default(),
        ready_since,
        batch,
        chosen_at,
        outcome,
        terminating: false,
    };
    let pulls: Vec<NodePull> = pod_nodes
        .iter()
        .map(|node| NodePull {
            node: node.clone(),
            node_ready: nodes.get(node).is_some_and(|n| n.ready()),
            prepull: prepulls
                .get(&Slot::pull_key(&name, node))
                .map(|p| prepull_view(p, &uid, dir)),
        })
        .collect();
    Some(Target {
        workload: format!("Deployment/{name}"),
        node: pod_nodes.first().cloned().unwrap_or_default(),
        image: image.to_string(),
        group: workload_group(
            pod_nodes.iter(),
            nodes,
            job.spec.batches.group_by.as_deref(),
        ),
        node_ready: pulls.iter().all(|p| p.node_ready),
        current: Some(view),
        prepull: None,
        slot: Slot::Workload {
            deployment: name,
            pulls,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_other_jobs_are_ignored() {
        let o = Outcome {
            kind: OutcomeKind::Failed,
            reason: "PullFailed".into(),
            message: "ErrImagePull: not found".into(),
        };
        let v = outcome_annotation("u1", &Direction::FORWARD, &o);
        let read = |dir| ours(Some(&v), "u1").and_then(|v| parse_outcome(v, dir));
        assert_eq!(read(&Direction::FORWARD), Some(o.clone()));
        assert_eq!(
            read(&Direction::ROLLBACK),
            None,
            "a forward failure is not a rollback's"
        );
        assert_eq!(ours(Some(&v), "u2"), None);
        let rb = outcome_annotation("u1", &Direction::ROLLBACK, &o);
        let read_rb = |dir| ours(Some(&rb), "u1").and_then(|v| parse_outcome(v, dir));
        assert_eq!(read_rb(&Direction::ROLLBACK), Some(o));
        assert_eq!(read_rb(&Direction::FORWARD), None);
    }

    #[test]
    fn an_unscheduled_daemonset_pod_belongs_to_its_pinned_node() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["edge-0059"]}
                ]}]
            }}}
        }))
        .unwrap();
        assert_eq!(intended_node(&spec).as_deref(), Some("edge-0059"));
    }

    fn node(name: &str, station: &str) -> (String, Arc<CachedNode>) {
        let n: CachedNode = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"station": station}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        (name.to_string(), Arc::new(n))
    }

    fn ds(name: &str, station: &str) -> DaemonSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"spec": {
                    "nodeSelector": {"station": station},
                    "containers": [{"name": "agent", "image": "a:1"}]
                }}
            }
        }))
        .unwrap()
    }

    fn ds_pod(ds: &str, node: &str) -> Arc<CachedPod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{ds}-{node}"), "namespace": "ns",
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                        "name": ds, "uid": format!("uid-{ds}"), "controller": true}]},
                "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "a:1"}]}
            }))
            .unwrap(),
        )
    }

    fn job(extra: serde_json::Value) -> RolloutJob {
        let mut spec = serde_json::json!({
            "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"fleet": "a"}}},
            "image": "a:2",
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut job = RolloutJob::new("j", serde_json::from_value(spec).unwrap());
        job.metadata.uid = Some("job-uid".into());
        job.metadata.namespace = Some("ns".into());
        job
    }

    /// A swap in flight of one DaemonSet (its pre-pull pod marked, its pod gone) is not a
    /// target of another DaemonSet of the same job on other nodes (the job's figures read 30,
    /// 50, 70 targets for 30 nodes).
    #[test]
    fn a_swap_in_flight_belongs_only_to_daemonsets_that_run_on_its_node() {
        let nodes: HashMap<String, Arc<CachedNode>> =
            [node("n1", "s1"), node("n2", "s2")].into_iter().collect();
        let mut prepull: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pp", "namespace": "ns",
                "labels": {keys::JOB_UID_LABEL: "job-uid", keys::BATCH_LABEL: "1"},
                "annotations": {keys::NODE_ANNOTATION: "n1", keys::SWAPPED_AT_ANNOTATION: "2026-11-21T10:00:00Z"}},
        }))
        .unwrap();
        prepull.metadata.uid = Some("pp-uid".into());
        let pods = vec![Arc::new(prepull), ds_pod("b", "n2")];
        let job = job(serde_json::json!({}));
        let (prepulls, _) = prepull_pods(&pods, &job, &Direction::FORWARD);
        let targets = |d: &DaemonSet| -> Vec<String> {
            daemonset_targets(
                d,
                "agent",
                "a:2",
                &Direction::FORWARD,
                &job,
                &pods,
                &nodes,
                &prepulls,
            )
            .into_iter()
            .map(|t| t.node)
            .collect()
        };
        assert_eq!(targets(&ds("a", "s1")), ["n1"], "a's swap in flight on n1");
        assert_eq!(
            targets(&ds("b", "s2")),
            ["n2"],
            "not n1: b does not run there"
        );
    }

    /// spec.nodeSelector narrows, never widens: a pod on a node the cache does not know (yet)
    /// is not a target.
    #[test]
    fn a_node_selector_never_admits_an_unknown_node() {
        let nodes: HashMap<String, Arc<CachedNode>> = [node("n1", "s1")].into_iter().collect();
        let pods = vec![ds_pod("a", "n1"), ds_pod("a", "ghost")];
        let targets = |job: &RolloutJob| -> Vec<String> {
            daemonset_targets(
                &ds("a", "s1"),
                "agent",
                "a:2",
                &Direction::FORWARD,
                job,
                &pods,
                &nodes,
                &HashMap::new(),
            )
            .into_iter()
            .map(|t| t.node)
            .collect()
        };
        assert_eq!(targets(&job(serde_json::json!({}))), ["ghost", "n1"]);
        assert_eq!(
            targets(&job(serde_json::json!({"nodeSelector": {"station": "s1"}}))),
            ["n1"]
        );
        let ghost = ["ghost".to_string()];
        let selector = BTreeMap::from([("station".to_string(), "s1".to_string())]);
        assert!(!all_match(ghost.iter(), &nodes, Some(&selector)));
        assert!(all_match(ghost.iter(), &nodes, None));
    }

    #[test]
    fn container_is_the_named_or_the_only_one() {
        let c = |n: &str| k8s_openapi::api::core::v1::Container {
            name: n.into(),
            ..Default::default()
        };
        assert_eq!(target_container(&[c("a")], None).unwrap(), "a");
        assert!(target_container(&[c("a"), c("b")], None).is_err());
        assert_eq!(target_container(&[c("a"), c("b")], Some("b")).unwrap(), "b");
        assert!(target_container(&[c("a")], Some("x")).is_err());
    }
}
