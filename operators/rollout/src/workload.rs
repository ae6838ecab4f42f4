//! The workload side of a rollout: one job at a time per workload (a lock annotation), and the
//! workload put in a shape where only the job moves its pods, then restored:
//!
//! - a DaemonSet is switched to `OnDelete` with the new image in its template (the job deletes
//!   one old pod per node);
//! - a StatefulSet gets the new image in its template together with a `RollingUpdate`
//!   partition equal to its replicas (nothing moves), and the job lowers the partition one
//!   ordinal at a time;
//! - a Deployment is left alone until its swap: one patch of its container image (the user's
//!   own rolling-update strategy then replaces its pods).
//!
//! Patches are strategic-merge patches of just these fields, so the user's own manager (kubectl,
//! Helm, Argo CD) keeps owning everything else.

use edgefleet_api::rollout::{WorkloadKind, keys};
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, StatefulSet, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::Container;

use crate::cached::CachedPod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::snapshot::container_image;

/// One workload a job drives, of any supported kind.
#[derive(Clone, Debug)]
pub enum Object {
    DaemonSet(DaemonSet),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
}

impl Object {
    pub fn kind(&self) -> WorkloadKind {
        match self {
            Self::DaemonSet(_) => WorkloadKind::DaemonSet,
            Self::StatefulSet(_) => WorkloadKind::StatefulSet,
            Self::Deployment(_) => WorkloadKind::Deployment,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::DaemonSet(o) => &o.metadata,
            Self::StatefulSet(o) => &o.metadata,
            Self::Deployment(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> String {
        self.meta().name.clone().unwrap_or_default()
    }

    /// `<Kind>/<name>`, as status and events name it.
    pub fn label(&self) -> String {
        format!("{:?}/{}", self.kind(), self.name())
    }

    pub fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        self.meta().annotations.clone().unwrap_or_default()
    }

    /// The pod template's containers.
    pub fn containers(&self) -> Vec<Container> {
        let spec = match self {
            Self::DaemonSet(o) => o.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
            Self::StatefulSet(o) => o.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
            Self::Deployment(o) => o.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
        };
        spec.map(|s| s.containers.clone()).unwrap_or_default()
    }

    fn strategy_type(&self) -> Option<String> {
        match self {
            Self::DaemonSet(o) => o.spec.as_ref()?.update_strategy.as_ref()?.type_.clone(),
            Self::StatefulSet(o) => o.spec.as_ref()?.update_strategy.as_ref()?.type_.clone(),
            Self::Deployment(o) => o.spec.as_ref()?.strategy.as_ref()?.type_.clone(),
        }
    }

    /// The StatefulSet's rolling-update partition, if it has one.
    pub fn partition(&self) -> Option<i32> {
        match self {
            Self::StatefulSet(o) => {
                o.spec
                    .as_ref()?
                    .update_strategy
                    .as_ref()?
                    .rolling_update
                    .as_ref()?
                    .partition
            }
            _ => None,
        }
    }

    /// Desired replicas (DaemonSets: 0, they have none).
    pub fn replicas(&self) -> i32 {
        match self {
            Self::DaemonSet(_) => 0,
            Self::StatefulSet(o) => o.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            Self::Deployment(o) => o.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        }
    }
}

/// The nodes of the workload's pods that are not on its template: a container image differs
/// from the template's container of the same name (not pulled, failed, skipped, offline). Those
/// pods must never be swapped by the workload's own controller. Deployments: none — the job
/// patches a Deployment's template only after every node of it pulled, so its own rolling
/// update never meets a node that did not pull.
pub fn pods_behind(w: &Object, pods: &[std::sync::Arc<CachedPod>]) -> Vec<String> {
    let Some(uid) = w.meta().uid.as_deref() else {
        return Vec::new();
    };
    if matches!(w, Object::Deployment(_)) {
        return Vec::new();
    }
    let template = w.containers();
    let mut nodes: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .filter(|p| {
            p.spec.as_ref().is_some_and(|spec| {
                spec.containers.iter().any(|c| {
                    template
                        .iter()
                        .find(|t| t.name == c.name)
                        .is_some_and(|t| t.image != c.image)
                })
            })
        })
        .map(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_else(|| p.metadata.name.clone().unwrap_or_default())
        })
        .collect();
    nodes.sort();
    nodes
}

/// Who holds a workload: `(job name, job uid)`.
pub fn lock_holder(w: &Object) -> Option<(String, String)> {
    let value = w
        .meta()
        .annotations
        .as_ref()?
        .get(keys::WORKLOAD_LOCK_ANNOTATION)?;
    let (name, uid) = value.split_once('/')?;
    Some((name.to_string(), uid.to_string()))
}

/// The template image of the target container.
pub fn template_image(w: &Object, container: &str) -> Option<String> {
    container_image(&w.containers(), container)
}

fn locked_by(w: &Object, job_uid: &str) -> bool {
    lock_holder(w).is_some_and(|(_, uid)| uid == job_uid)
}

/// What a workload needs so the job can drive it toward `image`; `None` when it already is.
///
/// The first time (no lock of this job yet) it records the previous image (and, for
/// DaemonSets and StatefulSets, the update strategy), so that rollback and release can restore
/// them even after the operator restarts. A Deployment's template is not touched here: its
/// image changes with its swap.
pub fn prepare_patch(
    w: &Object,
    job_name: &str,
    job_uid: &str,
    container: &str,
    image: &str,
) -> Option<Value> {
    let locked_by_us = locked_by(w, job_uid);
    let current = template_image(w, container);
    let ready = match w {
        Object::DaemonSet(_) => {
            w.strategy_type().as_deref() == Some("OnDelete") && current.as_deref() == Some(image)
        }
        Object::StatefulSet(_) => {
            w.strategy_type().as_deref() == Some("RollingUpdate")
                && w.partition().is_some()
                && current.as_deref() == Some(image)
        }
        Object::Deployment(_) => true,
    };
    if locked_by_us && ready {
        return None;
    }
    let mut annotations = serde_json::Map::new();
    let rollout_image = match w {
        // The Deployment keeps its image until its swap: that is what the job expects to see.
        Object::Deployment(_) if !locked_by_us => current.clone().unwrap_or_default(),
        _ => image.to_string(),
    };
    annotations.insert(keys::ROLLOUT_IMAGE_ANNOTATION.into(), json!(rollout_image));
    if !locked_by_us {
        annotations.insert(
            keys::WORKLOAD_LOCK_ANNOTATION.into(),
            json!(format!("{job_name}/{job_uid}")),
        );
        // An aborted job leaves these behind on purpose (the workload is still mid-way from
        // them), so only a workload that has none gets them recorded.
        let recorded = w.annotations();
        if !recorded.contains_key(keys::PREVIOUS_IMAGE_ANNOTATION) {
            annotations.insert(keys::PREVIOUS_IMAGE_ANNOTATION.into(), json!(current));
        }
        if !recorded.contains_key(keys::ORIGINAL_STRATEGY_ANNOTATION) {
            let strategy = match w {
                Object::DaemonSet(o) => serde_json::to_string(
                    &o.spec
                        .as_ref()
                        .and_then(|s| s.update_strategy.clone())
                        .unwrap_or_default(),
                )
                .ok(),
                Object::StatefulSet(o) => serde_json::to_string(
                    &o.spec
                        .as_ref()
                        .and_then(|s| s.update_strategy.clone())
                        .unwrap_or_default(),
                )
                .ok(),
                Object::Deployment(_) => None,
            };
            if let Some(strategy) = strategy {
                annotations.insert(keys::ORIGINAL_STRATEGY_ANNOTATION.into(), json!(strategy));
            }
        }
    }
    let template = json!({"spec": {"containers": [{"name": container, "image": image}]}});
    let mut metadata = json!({"annotations": annotations});
    if !locked_by_us {
        // Taking the lock is a compare-and-swap: the patch applies only to the version the
        // job decided on (else 409), so two jobs that both saw it free cannot both take it.
        metadata["resourceVersion"] = json!(w.meta().resource_version);
    }
    Some(match w {
        Object::DaemonSet(_) => json!({
            "metadata": metadata,
            "spec": {
                "updateStrategy": {"type": "OnDelete", "rollingUpdate": null},
                "template": template
            }
        }),
        // Image and partition in one patch: the StatefulSet controller never sees the new
        // template without a partition holding every pod back.
        Object::StatefulSet(_) => json!({
            "metadata": metadata,
            "spec": {
                "updateStrategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"partition": w.replicas()}
                },
                "template": template
            }
        }),
        Object::Deployment(_) => json!({"metadata": metadata}),
    })
}

/// The swap of a Deployment: its container image, recorded as the job's (so it is not read as
/// a hand edit) with the time the swap started.
pub fn set_image_patch(container: &str, image: &str, swapped_at: &str) -> Value {
    json!({
        "metadata": {"annotations": {
            keys::ROLLOUT_IMAGE_ANNOTATION: image,
            keys::SWAPPED_AT_ANNOTATION: swapped_at,
        }},
        "spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}
    })
}

/// A JSON patch lowering a StatefulSet's partition from `from` to `to`; the `test` makes it
/// fail (422) instead of raising a partition someone else lowered in between.
pub fn lower_partition_patch(from: i32, to: i32) -> Value {
    let path = "/spec/updateStrategy/rollingUpdate/partition";
    json!([
        {"op": "test", "path": path, "value": from},
        {"op": "replace", "path": path, "value": to},
    ])
}

/// The job's own marks on a Deployment (its targets' state), dropped when the job lets go.
fn deployment_marks() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for key in [
        keys::TARGET_BATCH_ANNOTATION,
        keys::TARGET_OUTCOME_ANNOTATION,
        keys::SWAPPED_AT_ANNOTATION,
    ] {
        m.insert(key.into(), Value::Null);
    }
    m
}

/// Gives the workload back: its original update strategy, no lock. The template keeps the
/// image the job ended on.
///
/// Unless pods are `behind` (not on the template: their node did not pull it). Then a
/// DaemonSet is only unlocked, as by [`freeze_patch`]: it stays `OnDelete` (its own controller
/// would swap those pods with no pre-pull, onto a node that perhaps cannot pull), and keeps the
/// recorded strategy and previous image for the job that catches them up. A StatefulSet keeps
/// its partition above them (see [`held_back`]).
pub fn release_patch(w: &Object, job_uid: &str, behind: usize) -> Option<Value> {
    if !locked_by(w, job_uid) {
        return None;
    }
    if behind > 0 && matches!(w, Object::DaemonSet(_)) {
        return freeze_patch(w, job_uid);
    }
    let mut annotations = serde_json::Map::new();
    for key in [
        keys::WORKLOAD_LOCK_ANNOTATION,
        keys::PREVIOUS_IMAGE_ANNOTATION,
        keys::ORIGINAL_STRATEGY_ANNOTATION,
        keys::ROLLOUT_IMAGE_ANNOTATION,
    ] {
        annotations.insert(key.into(), Value::Null);
    }
    let recorded = w.annotations();
    let original = recorded.get(keys::ORIGINAL_STRATEGY_ANNOTATION);
    let strategy = match w {
        Object::DaemonSet(_) => {
            let strategy: DaemonSetUpdateStrategy = original
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_else(|| DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: None,
                });
            let mut strategy = serde_json::to_value(strategy).unwrap_or(Value::Null);
            if strategy.get("rollingUpdate").is_none()
                && let Some(obj) = strategy.as_object_mut()
            {
                // Strategic merge keeps fields not named; say explicitly that rollingUpdate goes
                // only when the original had none and the type is not RollingUpdate.
                if obj.get("type").and_then(Value::as_str) == Some("OnDelete") {
                    obj.insert("rollingUpdate".into(), Value::Null);
                }
            }
            Some(strategy)
        }
        Object::StatefulSet(_) => {
            let strategy: StatefulSetUpdateStrategy = original
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_else(|| StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: None,
                });
            let mut strategy = serde_json::to_value(strategy).unwrap_or(Value::Null);
            if let Some(obj) = strategy.as_object_mut() {
                // An OnDelete StatefulSet swaps nothing by itself: no partition needed (nor
                // allowed) to hold pods back.
                let rolling = obj.get("type").and_then(Value::as_str) != Some("OnDelete");
                match (
                    held_back(w, behind).filter(|_| rolling),
                    obj.get_mut("rollingUpdate"),
                ) {
                    // Ordinals left on the old image (failed, blocked, skipped) stay behind the
                    // partition: giving it up would let the StatefulSet controller swap them
                    // with no pre-pull, onto a node that perhaps cannot pull.
                    (Some(partition), Some(Value::Object(ru))) => {
                        ru.insert("partition".into(), json!(partition));
                    }
                    (Some(partition), _) => {
                        obj.insert("rollingUpdate".into(), json!({"partition": partition}));
                    }
                    // Otherwise the job's partition goes, unless the original had its own.
                    (None, Some(Value::Object(ru))) => {
                        ru.entry("partition").or_insert(Value::Null);
                    }
                    (None, _) => {
                        obj.insert("rollingUpdate".into(), Value::Null);
                    }
                }
            }
            Some(strategy)
        }
        Object::Deployment(_) => {
            annotations.extend(deployment_marks());
            None
        }
    };
    Some(match strategy {
        Some(strategy) => json!({
            "metadata": {"annotations": annotations},
            "spec": {"updateStrategy": strategy}
        }),
        None => json!({"metadata": {"annotations": annotations}}),
    })
}

/// A StatefulSet's partition while some of its pods are not on its template: `behind` of them
/// by their images, or fewer updated replicas than desired by its status (which may lag).
fn held_back(w: &Object, behind: usize) -> Option<i32> {
    let Object::StatefulSet(sts) = w else {
        return None;
    };
    let lagging = sts
        .status
        .as_ref()
        .is_some_and(|s| s.updated_replicas.unwrap_or(0) < w.replicas());
    let partition = w.partition().filter(|p| *p > 0)?;
    (behind > 0 || lagging).then_some(partition)
}

/// Lets go of a workload without finishing it (abort): the lock goes, but a DaemonSet stays
/// `OnDelete` and a StatefulSet keeps its partition — restoring a rolling strategy would let
/// their controller replace every remaining pod without a pre-pull. The recorded previous image
/// and strategy stay for the next job, which finishes the work and restores them.
pub fn freeze_patch(w: &Object, job_uid: &str) -> Option<Value> {
    if !locked_by(w, job_uid) {
        return None;
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert(keys::WORKLOAD_LOCK_ANNOTATION.into(), Value::Null);
    annotations.insert(keys::ROLLOUT_IMAGE_ANNOTATION.into(), Value::Null);
    if matches!(w, Object::Deployment(_)) {
        annotations.extend(deployment_marks());
    }
    Some(json!({"metadata": {"annotations": annotations}}))
}

/// The image the workload had before the job (for rollback).
pub fn previous_image(w: &Object) -> Option<String> {
    w.annotations()
        .get(keys::PREVIOUS_IMAGE_ANNOTATION)
        .filter(|s| !s.is_empty())
        .cloned()
}

/// Someone else changed the workload while we hold it: the template image is not the one the
/// job last set (or found, for a Deployment not swapped yet), or the strategy is not the one
/// the job set. `None` before the job set anything.
pub fn changed_by_hand(w: &Object, container: &str, job_uid: &str) -> Option<String> {
    if !locked_by(w, job_uid) {
        return None;
    }
    let annotations = w.annotations();
    let expected_image = annotations.get(keys::ROLLOUT_IMAGE_ANNOTATION)?;
    let image = template_image(w, container).unwrap_or_default();
    if image != *expected_image {
        return Some(format!(
            "{} container {container} image was changed to {image:?} outside this RolloutJob (expected {expected_image:?})",
            w.label()
        ));
    }
    match w {
        Object::DaemonSet(_) if w.strategy_type().as_deref() != Some("OnDelete") => Some(format!(
            "{} update strategy was changed away from OnDelete outside this RolloutJob",
            w.label()
        )),
        Object::StatefulSet(_)
            if w.strategy_type().as_deref() != Some("RollingUpdate") || w.partition().is_none() =>
        {
            Some(format!(
                "{} update strategy was changed away from a RollingUpdate partition outside this RolloutJob",
                w.label()
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(image: &str, annotations: serde_json::Value, strategy: &str) -> Object {
        Object::DaemonSet(
            serde_json::from_value(json!({
                "metadata": {"name": "toll", "annotations": annotations},
                "spec": {
                    "selector": {"matchLabels": {"app": "toll"}},
                    "updateStrategy": {"type": strategy},
                    "template": {"spec": {"containers": [{"name": "agent", "image": image}]}}
                }
            }))
            .unwrap(),
        )
    }

    fn sts(image: &str, annotations: serde_json::Value, strategy: serde_json::Value) -> Object {
        Object::StatefulSet(
            serde_json::from_value(json!({
                "metadata": {"name": "db", "annotations": annotations},
                "spec": {
                    "replicas": 4,
                    "serviceName": "db",
                    "selector": {"matchLabels": {"app": "db"}},
                    "updateStrategy": strategy,
                    "template": {"spec": {"containers": [{"name": "agent", "image": image}]}}
                }
            }))
            .unwrap(),
        )
    }

    fn deploy(image: &str, annotations: serde_json::Value) -> Object {
        Object::Deployment(
            serde_json::from_value(json!({
                "metadata": {"name": "api", "annotations": annotations},
                "spec": {
                    "selector": {"matchLabels": {"app": "api"}},
                    "strategy": {"type": "RollingUpdate"},
                    "template": {"spec": {"containers": [{"name": "agent", "image": image}]}}
                }
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_statefulset_gets_image_and_a_full_partition_in_one_patch() {
        let s = sts("db:1", json!({}), json!({"type": "RollingUpdate"}));
        let patch = prepare_patch(&s, "job", "u1", "agent", "db:2").unwrap();
        assert_eq!(
            patch["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 4}})
        );
        assert_eq!(
            patch["spec"]["template"]["spec"]["containers"][0]["image"],
            "db:2"
        );
        let a = &patch["metadata"]["annotations"];
        assert_eq!(a[keys::PREVIOUS_IMAGE_ANNOTATION], "db:1");
        assert_eq!(
            a[keys::ORIGINAL_STRATEGY_ANNOTATION],
            r#"{"type":"RollingUpdate"}"#
        );
        // Prepared (even with the partition lowered since): nothing more, and no hand edit.
        let lock = json!({
            keys::WORKLOAD_LOCK_ANNOTATION: "job/u1",
            keys::ROLLOUT_IMAGE_ANNOTATION: "db:2",
            keys::ORIGINAL_STRATEGY_ANNOTATION: r#"{"type":"RollingUpdate"}"#,
        });
        let held = sts(
            "db:2",
            lock.clone(),
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}),
        );
        assert_eq!(prepare_patch(&held, "job", "u1", "agent", "db:2"), None);
        assert_eq!(changed_by_hand(&held, "agent", "u1"), None);
        let edited = sts("db:2", lock, json!({"type": "RollingUpdate"}));
        assert!(changed_by_hand(&edited, "agent", "u1").is_some());
        // Release drops the job's partition; the original had none.
        let patch = release_patch(&held, "u1", 0).unwrap();
        assert_eq!(
            patch["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": null})
        );
        // Pods seen behind the template keep the partition, whatever the status says.
        let patch = release_patch(&held, "u1", 1).unwrap();
        assert_eq!(
            patch["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}})
        );
        // Abort keeps the partition: nothing rolls on without a pre-pull.
        assert!(freeze_patch(&held, "u1").unwrap().get("spec").is_none());
        // Ordinals left behind (a failed pull blocked them) stay behind the partition.
        let Object::StatefulSet(mut partial) = held.clone() else {
            unreachable!()
        };
        partial.status = Some(k8s_openapi::api::apps::v1::StatefulSetStatus {
            updated_replicas: Some(2),
            ..Default::default()
        });
        let patch = release_patch(&Object::StatefulSet(partial), "u1", 0).unwrap();
        assert_eq!(
            patch["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}})
        );
        // An OnDelete original gets no partition back (the API would refuse it).
        let Object::StatefulSet(mut on_delete) = sts(
            "db:2",
            json!({
                keys::WORKLOAD_LOCK_ANNOTATION: "job/u1",
                keys::ORIGINAL_STRATEGY_ANNOTATION: r#"{"type":"OnDelete"}"#,
            }),
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}),
        ) else {
            unreachable!()
        };
        on_delete.status = Some(k8s_openapi::api::apps::v1::StatefulSetStatus {
            updated_replicas: Some(2),
            ..Default::default()
        });
        let patch = release_patch(&Object::StatefulSet(on_delete), "u1", 0).unwrap();
        assert_eq!(
            patch["spec"]["updateStrategy"],
            json!({"type": "OnDelete", "rollingUpdate": null})
        );
    }

    #[test]
    fn a_deployment_is_only_locked_until_its_swap() {
        let d = deploy("api:1", json!({}));
        let patch = prepare_patch(&d, "job", "u1", "agent", "api:2").unwrap();
        assert!(patch.get("spec").is_none(), "{patch}");
        let a = &patch["metadata"]["annotations"];
        assert_eq!(a[keys::ROLLOUT_IMAGE_ANNOTATION], "api:1");
        assert_eq!(a[keys::PREVIOUS_IMAGE_ANNOTATION], "api:1");
        assert!(a.get(keys::ORIGINAL_STRATEGY_ANNOTATION).is_none());
        let locked = deploy(
            "api:1",
            json!({keys::WORKLOAD_LOCK_ANNOTATION: "job/u1", keys::ROLLOUT_IMAGE_ANNOTATION: "api:1"}),
        );
        assert_eq!(prepare_patch(&locked, "job", "u1", "agent", "api:2"), None);
        assert_eq!(changed_by_hand(&locked, "agent", "u1"), None);
        let swap = set_image_patch("agent", "api:2", "u1@now");
        assert_eq!(
            swap["metadata"]["annotations"][keys::ROLLOUT_IMAGE_ANNOTATION],
            "api:2"
        );
        let release = release_patch(&locked, "u1", 0).unwrap();
        assert!(
            release.get("spec").is_none(),
            "the user's strategy is left alone"
        );
        assert!(release["metadata"]["annotations"][keys::TARGET_BATCH_ANNOTATION].is_null());
    }

    #[test]
    fn first_prepare_records_what_to_restore() {
        let d = ds("toll:1", json!({}), "RollingUpdate");
        let patch = prepare_patch(&d, "job", "u1", "agent", "toll:2").unwrap();
        let a = &patch["metadata"]["annotations"];
        assert_eq!(a[keys::WORKLOAD_LOCK_ANNOTATION], "job/u1");
        assert_eq!(a[keys::PREVIOUS_IMAGE_ANNOTATION], "toll:1");
        assert!(
            a[keys::ORIGINAL_STRATEGY_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("RollingUpdate")
        );
        assert_eq!(patch["spec"]["updateStrategy"]["type"], "OnDelete");
    }

    /// Two jobs that both saw the workload free must not both take it: the lock is taken
    /// only on the version the job decided on (a 409 otherwise); our own lock needs no guard.
    #[test]
    fn the_lock_is_taken_only_on_the_version_seen() {
        for w in [
            ds("toll:1", json!({}), "RollingUpdate"),
            sts("db:1", json!({}), json!({"type": "RollingUpdate"})),
            deploy("api:1", json!({})),
        ] {
            let mut w = w;
            match &mut w {
                Object::DaemonSet(o) => o.metadata.resource_version = Some("41".into()),
                Object::StatefulSet(o) => o.metadata.resource_version = Some("41".into()),
                Object::Deployment(o) => o.metadata.resource_version = Some("41".into()),
            }
            let patch = prepare_patch(&w, "job", "u1", "agent", "x:2").unwrap();
            assert_eq!(patch["metadata"]["resourceVersion"], "41", "{}", w.label());
        }
        // Held by another job (ended): taken over with the same guard.
        let other = ds(
            "toll:1",
            json!({keys::WORKLOAD_LOCK_ANNOTATION: "old/u0"}),
            "OnDelete",
        );
        let patch = prepare_patch(&other, "job", "u1", "agent", "toll:2").unwrap();
        assert!(patch["metadata"].get("resourceVersion").is_some());
        // Ours already: re-prepared without a guard (the DaemonSet controller bumps the version).
        let ours = ds(
            "toll:1",
            json!({keys::WORKLOAD_LOCK_ANNOTATION: "job/u1"}),
            "OnDelete",
        );
        let patch = prepare_patch(&ours, "job", "u1", "agent", "toll:2").unwrap();
        assert!(patch["metadata"].get("resourceVersion").is_none());
    }

    #[test]
    fn prepared_workload_needs_nothing_and_hand_edits_are_seen() {
        let lock = json!({
            keys::WORKLOAD_LOCK_ANNOTATION: "job/u1",
            keys::PREVIOUS_IMAGE_ANNOTATION: "toll:1",
            keys::ROLLOUT_IMAGE_ANNOTATION: "toll:2",
        });
        let d = ds("toll:2", lock.clone(), "OnDelete");
        assert_eq!(prepare_patch(&d, "job", "u1", "agent", "toll:2"), None);
        assert_eq!(changed_by_hand(&d, "agent", "u1"), None);
        let edited = ds("toll:9", lock, "OnDelete");
        assert!(
            changed_by_hand(&edited, "agent", "u1")
                .unwrap()
                .contains("toll:9")
        );
        assert_eq!(changed_by_hand(&edited, "agent", "another-job"), None);
        // A re-prepare of our own lock never overwrites the recorded previous image.
        let patch = prepare_patch(&edited, "job", "u1", "agent", "toll:2").unwrap();
        assert!(
            patch["metadata"]["annotations"]
                .get(keys::PREVIOUS_IMAGE_ANNOTATION)
                .is_none()
        );
    }

    #[test]
    fn release_restores_strategy_and_drops_the_lock() {
        let d = ds(
            "toll:2",
            json!({
                keys::WORKLOAD_LOCK_ANNOTATION: "job/u1",
                keys::ORIGINAL_STRATEGY_ANNOTATION: r#"{"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":1}}"#
            }),
            "OnDelete",
        );
        let patch = release_patch(&d, "u1", 0).unwrap();
        assert_eq!(patch["spec"]["updateStrategy"]["type"], "RollingUpdate");
        assert!(patch["metadata"]["annotations"][keys::WORKLOAD_LOCK_ANNOTATION].is_null());
        assert_eq!(release_patch(&d, "someone-else", 0), None);
    }

    fn pod(name: &str, node: &str, owner: &str, image: &str) -> std::sync::Arc<CachedPod> {
        std::sync::Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "toll",
                    "uid": owner, "controller": true
                }]},
                "spec": {"nodeName": node, "containers": [{"name": "agent", "image": image}]}
            }))
            .unwrap(),
        )
    }

    /// The promise after the end: a DaemonSet with a pod left on the old image (its node did
    /// not pull) is never handed back to `RollingUpdate`, whatever way the job ended.
    #[test]
    fn a_daemonset_with_pods_behind_its_template_stays_on_delete() {
        let Object::DaemonSet(mut d) = ds(
            "toll:2",
            json!({
                keys::WORKLOAD_LOCK_ANNOTATION: "job/u1",
                keys::PREVIOUS_IMAGE_ANNOTATION: "toll:1",
                keys::ROLLOUT_IMAGE_ANNOTATION: "toll:2",
                keys::ORIGINAL_STRATEGY_ANNOTATION: r#"{"type":"RollingUpdate"}"#
            }),
            "OnDelete",
        ) else {
            unreachable!()
        };
        d.metadata.uid = Some("ds-uid".into());
        let d = Object::DaemonSet(d);
        let pods = [
            pod("a", "edge-1", "ds-uid", "toll:2"),
            pod("b", "edge-2", "ds-uid", "toll:1"),
            pod("c", "edge-3", "other-uid", "toll:1"),
        ];
        assert_eq!(pods_behind(&d, &pods), vec!["edge-2".to_string()]);
        let patch = release_patch(&d, "u1", 1).unwrap();
        assert!(patch.get("spec").is_none(), "strategy untouched: {patch}");
        let a = &patch["metadata"]["annotations"];
        assert!(a[keys::WORKLOAD_LOCK_ANNOTATION].is_null());
        // Kept for the job that catches the node up, which restores them.
        assert!(a.get(keys::ORIGINAL_STRATEGY_ANNOTATION).is_none());
        assert!(a.get(keys::PREVIOUS_IMAGE_ANNOTATION).is_none());
        // Caught up: the original strategy comes back.
        let patch = release_patch(&d, "u1", 0).unwrap();
        assert_eq!(patch["spec"]["updateStrategy"]["type"], "RollingUpdate");
        // A Deployment never counts as behind: its template changes only after every pull.
        let dep = deploy("api:1", json!({}));
        assert!(pods_behind(&dep, &pods).is_empty());
    }
}
