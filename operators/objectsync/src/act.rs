//! The writes: one API call (two for a release) per [`Action`], each idempotent, so a crash
//! at any point is finished by the next reconcile from what the API server holds.

use edgefleet_api::objectsync::{NODE_LABEL, ObjectSync};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::plan::{Action, FINALIZER, MAX_LABEL_VALUE, OBJECT_UID_LABEL, RESYNC_ANNOTATION};

/// Field manager and event reporter of this operator.
pub const OPERATOR: &str = "edgefleet-objectsync";

/// What an action changed, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Created,
    Adopted,
    Deleted,
    Released,
    Resynced,
    /// Already as wanted (the object was gone).
    Nothing,
}

fn labels(node: &str, uid: &str) -> Value {
    let mut labels = json!({ OBJECT_UID_LABEL: uid });
    // Longer node names cannot be label values; such syncs are found by name.
    if node.len() <= MAX_LABEL_VALUE {
        labels[NODE_LABEL] = node.into();
    }
    labels
}

/// The server-side apply body of a new sync (no status: empty status = nothing acked).
pub fn create_body(
    namespace: &str,
    name: &str,
    node: &str,
    uid: &str,
    kind: crate::refs::Kind,
    object_name: &str,
) -> Value {
    json!({
        "apiVersion": "reliablesyncs.kubeedge.io/v1alpha1",
        "kind": "ObjectSync",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(node, uid),
            "finalizers": [FINALIZER],
        },
        "spec": {
            "objectAPIVersion": kind.api_version(),
            "objectKind": kind.as_str(),
            "objectName": object_name,
        }
    })
}

/// Labels and finalizer only: an adopted sync keeps its spec.
pub fn adopt_body(namespace: &str, name: &str, node: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "reliablesyncs.kubeedge.io/v1alpha1",
        "kind": "ObjectSync",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(node, uid),
            "finalizers": [FINALIZER],
        }
    })
}

/// A JSON patch dropping this operator's finalizer, guarded by a test that the list is still
/// the one the decision saw (another writer's change fails it, and the next reconcile
/// decides again).
pub fn release_patch(finalizers: &[String]) -> Option<Value> {
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return None;
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    Some(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
        {"op": "replace", "path": "/metadata/finalizers", "value": kept},
    ]))
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Runs one action.
pub async fn run(client: &Client, action: &Action) -> Result<Done> {
    let apply = PatchParams::apply(OPERATOR).force();
    let manager = PatchParams {
        field_manager: Some(OPERATOR.into()),
        ..PatchParams::default()
    };
    match action {
        Action::Create {
            namespace,
            name,
            node,
            uid,
            kind,
            object_name,
        } => {
            let api: Api<ObjectSync> = Api::namespaced(client.clone(), namespace);
            let body = create_body(namespace, name, node, uid, *kind, object_name);
            api.patch(name, &apply, &Patch::Apply(&body)).await?;
            Ok(Done::Created)
        }
        Action::Adopt {
            namespace,
            name,
            node,
            uid,
        } => {
            let api: Api<ObjectSync> = Api::namespaced(client.clone(), namespace);
            let body = adopt_body(namespace, name, node, uid);
            match api.patch(name, &apply, &Patch::Apply(&body)).await {
                Ok(_) => Ok(Done::Adopted),
                Err(e) if not_found(&e) => Ok(Done::Nothing),
                Err(e) => Err(e.into()),
            }
        }
        Action::Delete { namespace, name } => {
            let api: Api<ObjectSync> = Api::namespaced(client.clone(), namespace);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(Done::Deleted),
                Err(e) if not_found(&e) => Ok(Done::Nothing),
                Err(e) => Err(e.into()),
            }
        }
        Action::Release {
            namespace,
            name,
            finalizers,
            delete,
        } => {
            let api: Api<ObjectSync> = Api::namespaced(client.clone(), namespace);
            if let Some(patch) = release_patch(finalizers) {
                let patch: json_patch::Patch =
                    serde_json::from_value(patch).map_err(Error::Patch)?;
                match api.patch(name, &manager, &Patch::Json::<()>(patch)).await {
                    Ok(_) => {}
                    Err(e) if not_found(&e) => return Ok(Done::Nothing),
                    Err(e) => return Err(e.into()),
                }
            }
            if *delete {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if not_found(&e) => return Ok(Done::Nothing),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Done::Released)
        }
        Action::Resync {
            namespace,
            name,
            at,
        } => {
            let api: Api<ObjectSync> = Api::namespaced(client.clone(), namespace);
            let patch = json!({"metadata": {"annotations": {RESYNC_ANNOTATION: at.to_string()}}});
            match api.patch(name, &manager, &Patch::Merge(&patch)).await {
                Ok(_) => Ok(Done::Resynced),
                Err(e) if not_found(&e) => Ok(Done::Nothing),
                Err(e) => Err(e.into()),
            }
        }
    }
}
