//! Pre-pull pods: a short-lived pod pinned to one node whose only purpose is to make the
//! kubelet pull the new image there before the real pod is swapped.
//!
//! Nothing in the image is run on purpose: the container's command is a path no image has, so
//! on a real kubelet the container fails to start *after* its image is pulled (`StartError`).
//! Success is therefore read from the kubelet's report — an `imageID`, or a container past the
//! pulling stage — never from an exit code, and no `/bin/true` is assumed in the image.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, LocalObjectReference, Pod, PodSecurityContext, PodSpec,
    SeccompProfile, SecurityContext, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

use edgefleet_api::rollout::keys;

use crate::cached::{CachedContainerStatus, CachedPod};

/// Name of the one container of a pre-pull pod.
pub const CONTAINER: &str = "prepull";
/// A command no image has: the container never runs the image's code.
pub const NEVER_RUNS: &str = "/.edgefleet-prepull-does-not-run";

/// What to pull, where, and on whose behalf.
#[derive(Clone, Debug)]
pub struct PrePullRequest<'a> {
    pub job_name: &'a str,
    pub job_uid: &'a str,
    pub namespace: &'a str,
    pub node: &'a str,
    /// The target slot it pulls for, when not the node (StatefulSet and Deployment targets).
    pub slot: Option<&'a str>,
    pub image: &'a str,
    /// Batch key, e.g. `3` or `rb-2` for a rollback batch.
    pub batch: &'a str,
    /// 1-based attempt; a retry is a new pod with the next attempt number.
    pub attempt: i32,
    pub timeout_seconds: i64,
    pub pull_secrets: Vec<LocalObjectReference>,
}

/// The pod name for a (job, slot, attempt) — the slot is the node for DaemonSet targets:
/// deterministic, so a create after a restart finds the pod that already exists instead of
/// starting a second pull. The slot and the job's UID go through a 128-bit hash (a 40-bit one
/// made a collision likely enough per job at 100,000 nodes to stall a batch); the name stays
/// far below the 253 characters a pod name may have, and is 63 or less (a valid label value).
pub fn pod_name(job_name: &str, job_uid: &str, slot: &str, attempt: i32) -> String {
    let job: String = job_name.chars().take(16).collect();
    format!(
        "{}-pp-{:032x}-{attempt}",
        job.trim_end_matches(['-', '.']),
        fnv1a_128(&format!("{job_uid}/{slot}"))
    )
}

/// Whether an existing pod (found under the name a create was refused for) is the pre-pull
/// pod that create asked for: the same job, slot, attempt and image. Anything else is not
/// ours, and a 409 on it must not pass for a pull started.
pub fn is_same_prepull(existing: &Pod, wanted: &Pod) -> bool {
    let labels = |p: &Pod| p.metadata.labels.clone().unwrap_or_default();
    let annotations = |p: &Pod| p.metadata.annotations.clone().unwrap_or_default();
    let image = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
    };
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let (el, wl) = (labels(existing), labels(wanted));
    let (ea, wa) = (annotations(existing), annotations(wanted));
    [keys::PREPULL_LABEL, keys::JOB_UID_LABEL, keys::BATCH_LABEL]
        .iter()
        .all(|k| el.get(*k) == wl.get(*k))
        && [keys::ATTEMPT_ANNOTATION, keys::TARGET_SLOT_ANNOTATION]
            .iter()
            .all(|k| ea.get(*k) == wa.get(*k))
        && image(existing) == image(wanted)
        && node(existing) == node(wanted)
}

/// The pre-pull pod for one node.
pub fn build_pod(req: &PrePullRequest<'_>) -> Pod {
    let labels = BTreeMap::from([
        (keys::PREPULL_LABEL.to_string(), "true".to_string()),
        (keys::JOB_UID_LABEL.to_string(), req.job_uid.to_string()),
        (keys::BATCH_LABEL.to_string(), req.batch.to_string()),
    ]);
    let mut annotations = BTreeMap::from([
        (keys::NODE_ANNOTATION.to_string(), req.node.to_string()),
        (
            keys::ATTEMPT_ANNOTATION.to_string(),
            req.attempt.to_string(),
        ),
    ]);
    if let Some(slot) = req.slot {
        annotations.insert(keys::TARGET_SLOT_ANNOTATION.to_string(), slot.to_string());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(
                req.job_name,
                req.job_uid,
                req.slot.unwrap_or(req.node),
                req.attempt,
            )),
            namespace: Some(req.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            // Garbage collection removes the pod when the job goes, even if the operator is down.
            owner_references: Some(vec![OwnerReference {
                api_version: "edgefleet.io/v1alpha1".into(),
                kind: "RolloutJob".into(),
                name: req.job_name.into(),
                uid: req.job_uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(req.node.to_string()),
            restart_policy: Some("Never".into()),
            // The kubelet gives up on the pull itself too, so a stuck pull ends even while the
            // operator is away.
            active_deadline_seconds: Some(req.timeout_seconds),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(0),
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]),
            image_pull_secrets: (!req.pull_secrets.is_empty()).then(|| req.pull_secrets.clone()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(req.image.to_string()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec![NEVER_RUNS.into()]),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Capabilities::default()
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// Where a pre-pull stands, as the kubelet reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullState {
    /// Not bound yet, or the image is still being pulled.
    Pulling,
    /// The image is on the node.
    Pulled,
    /// The pull failed; `reason` is the kubelet's (`ErrImagePull`, `ImagePullBackOff`, ...).
    Failed { reason: String, message: String },
}

/// Kubelet waiting reasons that mean the image could not be pulled.
const PULL_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
    "SignatureValidationFailed",
];

/// Reads the pull's outcome from a pre-pull pod's status.
pub fn pull_state(pod: &CachedPod) -> PullState {
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER));
    if let Some(state) = container.and_then(container_pull_state) {
        return state;
    }
    // The pod's deadline passed before the image arrived: the kubelet killed it.
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Failed") => PullState::Failed {
            reason: status
                .and_then(|s| s.reason.clone())
                .unwrap_or_else(|| "PodFailed".into()),
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
        },
        _ => PullState::Pulling,
    }
}

fn container_pull_state(c: &CachedContainerStatus) -> Option<PullState> {
    // The kubelet fills imageID once the image is on the node.
    if !c.image_id.is_empty() {
        return Some(PullState::Pulled);
    }
    let state = c.state.as_ref()?;
    if state.running.is_some() || state.terminated.is_some() {
        return Some(PullState::Pulled);
    }
    let waiting = state.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or_default();
    if PULL_FAILURES.contains(&reason) {
        return Some(PullState::Failed {
            reason: reason.to_string(),
            message: waiting.message.clone().unwrap_or_default(),
        });
    }
    // Past the pull, the container could not be created or started: the image is there.
    if matches!(
        reason,
        "CreateContainerError" | "CreateContainerConfigError" | "RunContainerError" | "StartError"
    ) {
        return Some(PullState::Pulled);
    }
    None
}

/// 128-bit FNV-1a: a stable hash for names (not for security; the inputs are not chosen by
/// an adversary, and at 128 bits a collision among 100,000 slots is ~1e-29 likely).
fn fnv1a_128(s: &str) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    s.bytes()
        .fold(OFFSET, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_with(container_status: serde_json::Value, phase: &str) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": phase, "containerStatuses": [container_status]}
        }))
        .unwrap()
    }

    fn status(state: serde_json::Value, image_id: &str) -> serde_json::Value {
        json!({"name": CONTAINER, "image": "i", "imageID": image_id, "ready": false,
               "restartCount": 0, "state": state})
    }

    #[test]
    fn reads_the_kubelets_pull_report() {
        let cases = [
            (
                status(json!({"waiting": {"reason": "ContainerCreating"}}), ""),
                "Pending",
                PullState::Pulling,
            ),
            (
                status(json!({"running": {}}), "docker-pullable://i@sha256:1"),
                "Running",
                PullState::Pulled,
            ),
            (
                status(
                    json!({"terminated": {"exitCode": 128, "reason": "StartError"}}),
                    "",
                ),
                "Failed",
                PullState::Pulled,
            ),
            (
                status(json!({"waiting": {"reason": "RunContainerError"}}), ""),
                "Pending",
                PullState::Pulled,
            ),
            (
                status(
                    json!({"waiting": {"reason": "CreateContainerConfigError"}}),
                    "",
                ),
                "Pending",
                PullState::Pulled,
            ),
            (
                status(
                    json!({"waiting": {"reason": "ErrImagePull", "message": "not found"}}),
                    "",
                ),
                "Pending",
                PullState::Failed {
                    reason: "ErrImagePull".into(),
                    message: "not found".into(),
                },
            ),
            (
                status(
                    json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}),
                    "",
                ),
                "Pending",
                PullState::Failed {
                    reason: "ImagePullBackOff".into(),
                    message: "Back-off pulling image".into(),
                },
            ),
        ];
        for (cs, phase, want) in cases {
            assert_eq!(pull_state(&pod_with(cs.clone(), phase)), want, "{cs}");
        }
    }

    #[test]
    fn an_unbound_pod_is_pulling_and_a_deadline_kill_is_a_failure() {
        let unbound: CachedPod =
            serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(pull_state(&unbound), PullState::Pulling);
        let killed: CachedPod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": "too slow"}
        }))
        .unwrap();
        assert_eq!(
            pull_state(&killed),
            PullState::Failed {
                reason: "DeadlineExceeded".into(),
                message: "too slow".into()
            }
        );
    }

    #[test]
    fn pod_is_pinned_harmless_and_owned() {
        let pod = build_pod(&PrePullRequest {
            job_name: "toll-2",
            job_uid: "u-1",
            namespace: "ns",
            node: "edge-0001",
            slot: None,
            image: "registry.example/toll:2",
            batch: "1",
            attempt: 1,
            timeout_seconds: 600,
            pull_secrets: vec![],
        });
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("edge-0001"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        assert!(spec.containers[0].resources.is_none(), "requests nothing");
        assert_eq!(spec.active_deadline_seconds, Some(600));
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("RolloutJob", "u-1")
        );
    }

    #[test]
    fn names_are_stable_short_and_per_attempt() {
        let a = pod_name("toll-2", "u1", "edge-0001", 1);
        assert_eq!(a, pod_name("toll-2", "u1", "edge-0001", 1));
        assert_ne!(a, pod_name("toll-2", "u1", "edge-0002", 1));
        assert_ne!(a, pod_name("toll-2", "u1", "edge-0001", 2));
        assert_ne!(
            a,
            pod_name("toll-2", "u2", "edge-0001", 1),
            "two jobs whose names share a prefix never share a pod name"
        );
        let long = pod_name(&"x".repeat(300), "u1", &"n".repeat(253), 99);
        assert!(long.len() <= 63, "{long}");
    }

    /// The 40-bit hash of the node name collided often enough at 100,000 nodes to stall a
    /// batch: 100,000 node names (and the same under a second job) give distinct names.
    #[test]
    fn names_do_not_collide_across_a_large_fleet() {
        let mut seen = std::collections::HashSet::new();
        for uid in ["0e6f2a9c-1", "0e6f2a9c-2"] {
            for n in 0..100_000 {
                assert!(
                    seen.insert(pod_name("toll-2", uid, &format!("edge-{n:06}"), 1)),
                    "collision at edge-{n:06}"
                );
            }
        }
    }

    #[test]
    fn a_409_is_ours_only_for_the_same_job_slot_attempt_and_image() {
        let req = PrePullRequest {
            job_name: "j",
            job_uid: "u1",
            namespace: "ns",
            node: "edge-1",
            slot: None,
            image: "a:2",
            batch: "1",
            attempt: 1,
            timeout_seconds: 60,
            pull_secrets: Vec::new(),
        };
        let wanted = build_pod(&req);
        assert!(is_same_prepull(&build_pod(&req), &wanted));
        for other in [
            PrePullRequest {
                job_uid: "u2",
                ..req.clone()
            },
            PrePullRequest {
                node: "edge-2",
                ..req.clone()
            },
            PrePullRequest {
                image: "a:3",
                ..req.clone()
            },
            PrePullRequest {
                attempt: 2,
                ..req.clone()
            },
            PrePullRequest {
                slot: Some("StatefulSet/db/1"),
                ..req.clone()
            },
        ] {
            assert!(!is_same_prepull(&build_pod(&other), &wanted), "{other:?}");
        }
        let mut stranger = wanted.clone();
        stranger.metadata.labels = None;
        assert!(!is_same_prepull(&stranger, &wanted));
    }
}
