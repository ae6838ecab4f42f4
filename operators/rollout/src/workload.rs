//! The workload side of a rollout: one job at a time per workload (a lock annotation), the
//! DaemonSet switched to `OnDelete` with the new image in its template, and restored after.
//! Patches are strategic-merge patches of just these fields, so the user's own manager (kubectl,
//! Helm, Argo CD) keeps owning everything else.

use edgefleet_api::rollout::keys;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetUpdateStrategy};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::snapshot::container_image;

/// Who holds a workload: `(job name, job uid)`.
pub fn lock_holder(ds: &DaemonSet) -> Option<(String, String)> {
    let value = ds.annotations().get(keys::WORKLOAD_LOCK_ANNOTATION)?;
    let (name, uid) = value.split_once('/')?;
    Some((name.to_string(), uid.to_string()))
}

/// The template image of the target container.
pub fn template_image(ds: &DaemonSet, container: &str) -> Option<String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| container_image(&s.containers, container))
}

fn strategy_type(ds: &DaemonSet) -> Option<String> {
    ds.spec.as_ref()?.update_strategy.as_ref()?.type_.clone()
}

/// What a DaemonSet needs so the job can drive it toward `image`; `None` when it already is.
///
/// The first time (no lock of this job yet) it records the previous image and update strategy,
/// so that rollback and release can restore them even after the operator restarts.
pub fn prepare_patch(
    ds: &DaemonSet,
    job_name: &str,
    job_uid: &str,
    container: &str,
    image: &str,
) -> Option<Value> {
    let locked_by_us = lock_holder(ds).is_some_and(|(_, uid)| uid == job_uid);
    let on_delete = strategy_type(ds).as_deref() == Some("OnDelete");
    let current = template_image(ds, container);
    if locked_by_us && on_delete && current.as_deref() == Some(image) {
        return None;
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert(keys::ROLLOUT_IMAGE_ANNOTATION.into(), json!(image));
    if !locked_by_us {
        annotations.insert(
            keys::WORKLOAD_LOCK_ANNOTATION.into(),
            json!(format!("{job_name}/{job_uid}")),
        );
        // An aborted job leaves these behind on purpose (the workload is still mid-way from
        // them), so only a workload that has none gets them recorded.
        let recorded = ds.annotations();
        if !recorded.contains_key(keys::PREVIOUS_IMAGE_ANNOTATION) {
            annotations.insert(keys::PREVIOUS_IMAGE_ANNOTATION.into(), json!(current));
        }
        if !recorded.contains_key(keys::ORIGINAL_STRATEGY_ANNOTATION) {
            let strategy = ds
                .spec
                .as_ref()
                .and_then(|s| s.update_strategy.clone())
                .unwrap_or_default();
            annotations.insert(
                keys::ORIGINAL_STRATEGY_ANNOTATION.into(),
                json!(serde_json::to_string(&strategy).unwrap_or_default()),
            );
        }
    }
    Some(json!({
        "metadata": {"annotations": annotations},
        "spec": {
            "updateStrategy": {"type": "OnDelete", "rollingUpdate": null},
            "template": {"spec": {"containers": [{"name": container, "image": image}]}}
        }
    }))
}

/// Gives the DaemonSet back: its original update strategy, no lock. The template keeps the
/// image the job ended on.
pub fn release_patch(ds: &DaemonSet, job_uid: &str) -> Option<Value> {
    if lock_holder(ds).is_none_or(|(_, uid)| uid != job_uid) {
        return None;
    }
    let strategy: DaemonSetUpdateStrategy = ds
        .annotations()
        .get(keys::ORIGINAL_STRATEGY_ANNOTATION)
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
    Some(json!({
        "metadata": {"annotations": {
            keys::WORKLOAD_LOCK_ANNOTATION: null,
            keys::PREVIOUS_IMAGE_ANNOTATION: null,
            keys::ORIGINAL_STRATEGY_ANNOTATION: null,
            keys::ROLLOUT_IMAGE_ANNOTATION: null,
        }},
        "spec": {"updateStrategy": strategy}
    }))
}

/// Lets go of a workload without finishing it (abort): the lock goes, but the DaemonSet stays
/// `OnDelete` — restoring a rolling strategy would let the DaemonSet controller replace every
/// remaining pod without a pre-pull. The recorded previous image and strategy stay for the next
/// job, which finishes the work and restores them.
pub fn freeze_patch(ds: &DaemonSet, job_uid: &str) -> Option<Value> {
    if lock_holder(ds).is_none_or(|(_, uid)| uid != job_uid) {
        return None;
    }
    Some(json!({
        "metadata": {"annotations": {
            keys::WORKLOAD_LOCK_ANNOTATION: null,
            keys::ROLLOUT_IMAGE_ANNOTATION: null,
        }}
    }))
}

/// The image the workload had before the job (for rollback).
pub fn previous_image(ds: &DaemonSet) -> Option<String> {
    ds.annotations()
        .get(keys::PREVIOUS_IMAGE_ANNOTATION)
        .filter(|s| !s.is_empty())
        .cloned()
}

/// Someone else changed the workload while we hold it: the template image is not the one the
/// job last set, or the strategy is no longer `OnDelete`. `None` before the job set anything.
pub fn changed_by_hand(ds: &DaemonSet, container: &str, job_uid: &str) -> Option<String> {
    if lock_holder(ds).is_none_or(|(_, uid)| uid != job_uid) {
        return None;
    }
    let expected_image = ds.annotations().get(keys::ROLLOUT_IMAGE_ANNOTATION)?;
    let image = template_image(ds, container).unwrap_or_default();
    if image != *expected_image {
        return Some(format!(
            "DaemonSet {} container {container} image was changed to {image:?} outside this RolloutJob (expected {expected_image:?})",
            ds.name_any()
        ));
    }
    if strategy_type(ds).as_deref() != Some("OnDelete") {
        return Some(format!(
            "DaemonSet {} update strategy was changed away from OnDelete outside this RolloutJob",
            ds.name_any()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(image: &str, annotations: serde_json::Value, strategy: &str) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "toll", "annotations": annotations},
            "spec": {
                "selector": {"matchLabels": {"app": "toll"}},
                "updateStrategy": {"type": strategy},
                "template": {"spec": {"containers": [{"name": "agent", "image": image}]}}
            }
        }))
        .unwrap()
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
        let patch = release_patch(&d, "u1").unwrap();
        assert_eq!(patch["spec"]["updateStrategy"]["type"], "RollingUpdate");
        assert!(patch["metadata"]["annotations"][keys::WORKLOAD_LOCK_ANNOTATION].is_null());
        assert_eq!(release_patch(&d, "someone-else"), None);
    }
}
