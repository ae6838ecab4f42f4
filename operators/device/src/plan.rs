//! What to write for one Device or one DeviceModel (pure).
//!
//! ## Field ownership on a Device (server-side apply, one field manager per writer)
//!
//! | field | manager |
//! |---|---|
//! | `spec`, `metadata.labels` | the user (kubectl, GitOps) |
//! | `metadata.annotations[edgefleet.io/device-model-generation]` | `edgefleet-device` |
//! | `status.conditions[Valid, TwinSynced, Online]`, `status.propertySync[*]`, `status.syncedProperties`, `status.observedGeneration` | `edgefleet-device` (status subresource) |
//! | `status.twins`, `status.state`, `status.lastOnlineTime`, `status.reportToCloud`, `status.reportCycle` | the hub (`edgefleet-hub`, status subresource, later) |
//!
//! Each writer's apply body carries only its own fields, so neither removes nor overwrites the
//! other's: an apply only drops the fields its *own* manager stopped sending. `conditions` and
//! `propertySync` are map lists (keys `type`, `propertyName`), owned per entry; `twins` is an
//! atomic list owned by the hub alone. The operator never writes `twins`.
//!
//! ## Re-delivery on a model change
//!
//! KubeEdge v1.22 sends nothing to the edge when only a DeviceModel changes. The hub and the
//! objectsync operator (re)deliver a Device whenever its `resourceVersion` moves, so the
//! operator records the model's `metadata.generation` in the Device annotation
//! [`MODEL_GENERATION_ANNOTATION`]: a model spec change rewrites it on every Device of the
//! model (found through the model → devices index), which moves their `resourceVersion` and
//! sends them, with the new model, to their nodes.

use std::collections::BTreeMap;

use edgefleet_api::devices::{
    CONDITION_ONLINE, CONDITION_TWIN_SYNCED, CONDITION_VALID, Device, DeviceModel,
    PropertySyncStatus,
};
use edgefleet_kit::{ConditionStatus, set_condition};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde::Serialize;

use crate::sync::{self, SessionUp, Staleness};
use crate::validate::{self, Validity};

/// The annotation carrying the model generation a Device was last delivered with.
pub const MODEL_GENERATION_ANNOTATION: &str = "edgefleet.io/device-model-generation";
/// Held on a DeviceModel while Devices reference it.
pub const MODEL_IN_USE_FINALIZER: &str = "edgefleet.io/device-model-in-use";

/// The status fields this operator owns (see the module table): the body of its status apply.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct OwnedStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
    pub property_sync: Vec<PropertySyncStatus>,
    /// `x/y` for the printer column.
    pub synced_properties: String,
}

/// A Warning event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub reason: String,
    pub message: String,
}

/// What one Device needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePlan {
    /// The owned status, when it differs from what the Device carries.
    pub status: Option<OwnedStatus>,
    /// The Valid condition went False or changed its message.
    pub warning: Option<Warning>,
    /// The model generation to record (the model changed since the Device was delivered).
    pub annotate: Option<String>,
    /// When to look again (a property may go Stale).
    pub recheck_at: Option<Timestamp>,
    pub valid: bool,
    pub online: &'static str,
    pub synced: (usize, usize),
}

fn owned_of(device: &Device) -> OwnedStatus {
    let status = device.status.as_ref();
    OwnedStatus {
        observed_generation: status.and_then(|s| s.observed_generation),
        conditions: status
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                [CONDITION_VALID, CONDITION_TWIN_SYNCED, CONDITION_ONLINE]
                    .contains(&c.type_.as_str())
            })
            .collect(),
        property_sync: status
            .and_then(|s| s.property_sync.clone())
            .unwrap_or_default(),
        synced_properties: status
            .and_then(|s| s.synced_properties.clone())
            .unwrap_or_default(),
    }
}

fn status_of(s: &str) -> ConditionStatus {
    match s {
        "True" => ConditionStatus::True,
        "False" => ConditionStatus::False,
        _ => ConditionStatus::Unknown,
    }
}

/// Plans one Device from its model (`None`: missing) and its node's session.
pub fn plan_device(
    device: &Device,
    model: Option<&DeviceModel>,
    session: SessionUp,
    now: Timestamp,
    staleness: Staleness,
) -> DevicePlan {
    let current = owned_of(device);
    let generation = device.metadata.generation;
    let validity = validate::validate(device, model);
    let (reason, message) = validity.reason_and_message(&device.spec.device_model_ref.name);
    let outcome = sync::property_sync(device, now, staleness);
    let valid = validity.is_valid();
    let (ts, tr, tm) = sync::twin_synced(valid, &outcome.properties);
    let (os, or, om) = sync::online(device, session);

    let mut conditions = current.conditions.clone();
    let before = conditions
        .iter()
        .find(|c| c.type_ == CONDITION_VALID)
        .cloned();
    set_condition(
        &mut conditions,
        CONDITION_VALID,
        valid,
        reason,
        &message,
        generation,
        now,
    );
    set_condition(
        &mut conditions,
        CONDITION_TWIN_SYNCED,
        status_of(ts),
        tr,
        &tm,
        generation,
        now,
    );
    set_condition(
        &mut conditions,
        CONDITION_ONLINE,
        status_of(os),
        or,
        &om,
        generation,
        now,
    );

    let warning = match (&validity, before) {
        (Validity::Invalid(_), Some(b)) if b.status == "False" && b.message == message => None,
        (Validity::Invalid(_), _) => Some(Warning {
            reason: reason.to_owned(),
            message: message.clone(),
        }),
        (Validity::Valid, _) => None,
    };

    let (synced, total) = sync::synced_count(&outcome.properties);
    let desired = OwnedStatus {
        observed_generation: generation,
        conditions,
        property_sync: outcome.properties,
        synced_properties: format!("{synced}/{total}"),
    };
    let annotate = model.and_then(|m| {
        let want = m.metadata.generation.unwrap_or_default().to_string();
        let have = device.annotations().get(MODEL_GENERATION_ANNOTATION);
        (have != Some(&want)).then_some(want)
    });
    DevicePlan {
        synced: (synced, total),
        status: (desired != current).then_some(desired),
        warning,
        annotate,
        recheck_at: outcome.recheck_at,
        valid,
        online: os,
    }
}

/// What one DeviceModel needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelPlan {
    /// `Some(true)`: add the in-use finalizer; `Some(false)`: remove it.
    pub finalizer: Option<bool>,
    /// The model is being deleted while Devices use it: say which.
    pub in_use: Option<Warning>,
}

/// How many Device names an in-use message lists before "and N more".
const LISTED: usize = 10;

/// Plans one DeviceModel from the names of the Devices that reference it.
pub fn plan_model(model: &DeviceModel, users: &[String]) -> ModelPlan {
    let has = model
        .finalizers()
        .iter()
        .any(|f| f == MODEL_IN_USE_FINALIZER);
    let deleting = model.metadata.deletion_timestamp.is_some();
    let finalizer = match (users.is_empty(), has) {
        (true, true) => Some(false),
        // A finalizer cannot be added to an object being deleted.
        (false, false) if !deleting => Some(true),
        _ => None,
    };
    let in_use = (deleting && !users.is_empty()).then(|| {
        let mut names = users.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
        if users.len() > LISTED {
            names.push_str(&format!(" and {} more", users.len() - LISTED));
        }
        Warning {
            reason: "ModelInUse".into(),
            message: format!(
                "DeviceModel {} is used by {} Device(s): {names}; it is deleted once no Device references it",
                model.name_any(),
                users.len()
            ),
        }
    });
    ModelPlan { finalizer, in_use }
}

/// The annotations body of the Device apply (only the operator's own annotation).
pub fn annotation_body(value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(MODEL_GENERATION_ANNOTATION.to_owned(), value.to_owned())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn staleness() -> Staleness {
        Staleness {
            floor: Duration::from_secs(60),
        }
    }

    fn model(generation: i64, finalizers: &[&str], deleting: bool) -> DeviceModel {
        let mut m = json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": "thermo", "namespace": "ns", "generation": generation, "finalizers": finalizers},
            "spec": {"protocol": "modbus", "properties": [{"name": "temp", "type": "INT", "accessMode": "ReadWrite", "maximum": "50"}]},
        });
        if deleting {
            m["metadata"]["deletionTimestamp"] = json!("2026-12-02T10:00:00Z");
        }
        serde_json::from_value(m).unwrap()
    }

    fn device(value: &str) -> Device {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "d", "namespace": "ns", "generation": 1},
            "spec": {"deviceModelRef": {"name": "thermo"}, "nodeName": "edge-0000",
                     "properties": [{"name": "temp", "desired": {"value": value}}]},
        }))
        .unwrap()
    }

    /// The Device as it reads back after the plan's writes.
    fn written(mut d: Device, plan: &DevicePlan) -> Device {
        if let Some(s) = &plan.status {
            let status = d.status.get_or_insert_with(Default::default);
            status.conditions = Some(s.conditions.clone());
            status.property_sync = Some(s.property_sync.clone());
            status.observed_generation = s.observed_generation;
            status.synced_properties = Some(s.synced_properties.clone());
        }
        if let Some(a) = &plan.annotate {
            d.annotations_mut().extend(annotation_body(a));
        }
        d
    }

    #[test]
    fn a_bad_device_warns_once_per_change() {
        let now = Timestamp::now();
        let m = model(1, &[], false);
        let d = device("99");
        let first = plan_device(&d, Some(&m), Some(true), now, staleness());
        let warning = first.warning.clone().unwrap();
        assert_eq!(warning.reason, "OutOfRange");
        assert_eq!(
            warning.message,
            "property temp: desired value 99 is above the maximum 50"
        );
        assert_eq!(first.annotate.as_deref(), Some("1"));
        // Reconciled again after its own writes: nothing to write, no second warning.
        let d = written(d, &first);
        let again = plan_device(&d, Some(&m), Some(true), now, staleness());
        assert_eq!(again.status, None);
        assert_eq!(again.warning, None);
        assert_eq!(again.annotate, None);
        // Another problem: a new warning.
        let mut d2 = d.clone();
        d2.spec.properties.as_mut().unwrap()[0]
            .desired
            .as_mut()
            .unwrap()
            .value = "x".into();
        assert_eq!(
            plan_device(&d2, Some(&m), Some(true), now, staleness())
                .warning
                .unwrap()
                .reason,
            "InvalidValue"
        );
        // Fixed: Valid true, no warning.
        let mut d3 = d.clone();
        d3.spec.properties.as_mut().unwrap()[0]
            .desired
            .as_mut()
            .unwrap()
            .value = "20".into();
        let fixed = plan_device(&d3, Some(&m), Some(true), now, staleness());
        assert!(fixed.valid);
        assert_eq!(fixed.warning, None);
        assert!(fixed.status.is_some());
    }

    #[test]
    fn a_model_spec_change_reannotates() {
        let now = Timestamp::now();
        let d = device("20");
        let first = plan_device(
            &d,
            Some(&model(1, &[], false)),
            Some(true),
            now,
            staleness(),
        );
        let d = written(d, &first);
        let after = plan_device(
            &d,
            Some(&model(2, &[], false)),
            Some(true),
            now,
            staleness(),
        );
        assert_eq!(after.annotate.as_deref(), Some("2"));
        assert_eq!(
            plan_device(&d, None, Some(true), now, staleness()).annotate,
            None
        );
    }

    #[test]
    fn model_finalizer_table() {
        let users = vec!["a".to_owned(), "b".to_owned()];
        let f = MODEL_IN_USE_FINALIZER;
        // (model, users, finalizer action, in-use warning?)
        let cases = [
            (model(1, &[], false), &users[..], Some(true), false),
            (model(1, &[f], false), &users[..], None, false),
            (model(1, &[f], false), &[][..], Some(false), false),
            (model(1, &[], false), &[][..], None, false),
            (model(1, &[f], true), &users[..], None, true),
            (model(1, &[f], true), &[][..], Some(false), false),
            (model(1, &[], true), &users[..], None, true),
        ];
        for (i, (m, users, finalizer, warn)) in cases.into_iter().enumerate() {
            let plan = plan_model(&m, users);
            assert_eq!(plan.finalizer, finalizer, "case {i}");
            assert_eq!(plan.in_use.is_some(), warn, "case {i}");
        }
        let plan = plan_model(&model(1, &[f], true), &users);
        assert_eq!(
            plan.in_use.unwrap().message,
            "DeviceModel thermo is used by 2 Device(s): a, b; it is deleted once no Device references it"
        );
    }
}
