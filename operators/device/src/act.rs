//! The writes, each an idempotent server-side apply under [`OPERATOR`], so a crash at any
//! point is finished by the next reconcile from what the API server holds.

use edgefleet_api::devices::{Device, DeviceModel};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch};
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::json;

use crate::error::Result;
use crate::plan::{MODEL_IN_USE_FINALIZER, OwnedStatus, Warning, annotation_body};

/// Field manager and event reporter of this operator.
pub const OPERATOR: &str = "edgefleet-device";

/// Applies the status fields the operator owns (and only those).
pub async fn apply_status(api: &Api<Device>, name: &str, status: &OwnedStatus) -> Result<()> {
    edgefleet_kit::apply_status::<Device, _>(api, name, status, OPERATOR).await?;
    Ok(())
}

/// Records the model generation the Device is delivered with (moves its resourceVersion).
pub async fn annotate(api: &Api<Device>, name: &str, generation: &str) -> Result<()> {
    let body = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "annotations": annotation_body(generation)},
    });
    api.patch(
        name,
        &edgefleet_kit::apply_params(OPERATOR),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Adds (`hold`) or drops the in-use finalizer: the apply carries it or not, and server-side
/// apply removes what this manager stopped sending, never another manager's finalizers.
pub async fn set_finalizer(api: &Api<DeviceModel>, name: &str, hold: bool) -> Result<()> {
    let mut metadata = json!({"name": name});
    if hold {
        metadata["finalizers"] = json!([MODEL_IN_USE_FINALIZER]);
    }
    let body = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": metadata,
    });
    api.patch(
        name,
        &edgefleet_kit::apply_params(OPERATOR),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Publishes a Warning event about `kind/name` (failures are logged: an event is best effort).
pub async fn warn(
    recorder: &Recorder,
    kind: &str,
    namespace: &str,
    name: &str,
    uid: Option<String>,
    warning: &Warning,
) {
    let event = Event {
        type_: EventType::Warning,
        reason: warning.reason.clone(),
        note: Some(warning.message.clone()),
        action: "Validate".into(),
        secondary: None,
    };
    let reference = ObjectReference {
        api_version: Some("devices.kubeedge.io/v1beta1".into()),
        kind: Some(kind.to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid,
        ..ObjectReference::default()
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, kind, name, "could not publish event");
    }
}
