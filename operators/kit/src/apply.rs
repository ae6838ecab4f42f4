//! Server-side apply, the one way edgefleet operators write objects and status.
//!
//! Every write is a `Patch::Apply` with `PatchParams::apply(field_manager).force()`:
//!
//! - **Apply** sends only the fields the operator means to own; the API server merges them with
//!   everyone else's fields and records the operator as their manager. No read-modify-write, no
//!   resourceVersion conflicts, and the same call creates or updates, so it is idempotent.
//! - **One field manager per operator** (e.g. `edgefleet-rollout`): the operator is the single
//!   owner of the fields it applies. A field it stops sending is removed, because it owned it.
//! - **Force**: when another manager (a `kubectl edit`, an older release under another manager
//!   name) has taken one of those fields, the controller's desired state wins and takes the field
//!   back, instead of failing the reconcile forever with a conflict — what the Kubernetes
//!   documentation asks of controllers. Fields no one else sends are not touched by force.

use std::fmt::Debug;

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The edgefleet convention: server-side apply as `field_manager`, forcing conflicts.
pub fn apply_params(field_manager: &str) -> PatchParams {
    PatchParams::apply(field_manager).force()
}

/// Metadata an operator may own. Everything else in metadata is the server's (uid,
/// resourceVersion, managedFields, ...) and must not be in an apply body: managedFields is
/// rejected, and a resourceVersion would turn the apply into a conditional update.
const OWNED_METADATA: &[&str] = &["labels", "annotations", "ownerReferences", "finalizers"];

/// Applies `obj` as `name` (in the Api's namespace) and returns the object as stored.
///
/// The body is [`apply_body`]: `obj`'s fields without its status and server-owned metadata.
/// Build `obj` with exactly the fields to own: a typed object also serializes required fields
/// left at their default (a `Deployment`'s `selector: {}`), and those get applied too.
///
/// # Errors
/// [`Error::Serialize`] if `obj` does not serialize to a JSON object; [`Error::Apply`] if the
/// API server rejects it.
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &K, field_manager: &str) -> Result<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let body = apply_body(name, api.namespace(), obj)?;
    api.patch(name, &apply_params(field_manager), &Patch::Apply(&body))
        .await
        .map_err(|source| apply_error::<K>(name, source))
}

/// Applies `status` to the status subresource of `name` and returns the object as stored.
///
/// The body is [`status_body`]; the operator owns exactly the status fields it sends.
///
/// # Errors
/// [`Error::Serialize`] if `status` cannot be serialized; [`Error::Apply`] if the API server
/// rejects it (e.g. the object is gone, or the kind has no status subresource).
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    status: &S,
    field_manager: &str,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    S: Serialize,
{
    let body = status_body::<K, S>(name, status)?;
    api.patch_status(name, &apply_params(field_manager), &Patch::Apply(&body))
        .await
        .map_err(|source| apply_error::<K>(name, source))
}

/// The apply body for `obj`: `apiVersion` and `kind` of `K`, `metadata` reduced to `name`,
/// `namespace` (when given) and the owned fields (labels, annotations, ownerReferences,
/// finalizers), and every other top-level field of `obj` except `status`, which belongs to
/// [`apply_status`].
///
/// # Errors
/// [`Error::Serialize`] if `obj` does not serialize to a JSON object.
pub fn apply_body<K>(name: &str, namespace: Option<&str>, obj: &K) -> Result<Value>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let serialize_err = |source| Error::Serialize {
        kind: K::kind(&()).into_owned(),
        name: name.to_owned(),
        source,
    };
    let mut body = match serde_json::to_value(obj).map_err(serialize_err)? {
        Value::Object(map) => map,
        other => {
            let msg = format!("expected a JSON object, got {other}");
            return Err(serialize_err(serde::ser::Error::custom(msg)));
        }
    };
    let old_meta = match body.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut metadata = Map::new();
    metadata.insert("name".into(), name.into());
    if let Some(ns) = namespace {
        metadata.insert("namespace".into(), ns.into());
    }
    for (key, value) in old_meta {
        if OWNED_METADATA.contains(&key.as_str()) && !value.is_null() {
            metadata.insert(key, value);
        }
    }
    body.remove("status");
    body.insert("apiVersion".into(), K::api_version(&()).into());
    body.insert("kind".into(), K::kind(&()).into());
    body.insert("metadata".into(), metadata.into());
    Ok(body.into())
}

/// The status apply body: `{apiVersion, kind, metadata: {name}, status}`.
///
/// # Errors
/// [`Error::Serialize`] if `status` cannot be serialized.
pub fn status_body<K, S>(name: &str, status: &S) -> Result<Value>
where
    K: Resource<DynamicType = ()>,
    S: Serialize,
{
    let status = serde_json::to_value(status).map_err(|source| Error::Serialize {
        kind: K::kind(&()).into_owned(),
        name: name.to_owned(),
        source,
    })?;
    Ok(serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": status,
    }))
}

fn apply_error<K: Resource<DynamicType = ()>>(name: &str, source: kube::Error) -> Error {
    Error::Apply {
        kind: K::kind(&()).into_owned(),
        name: name.to_owned(),
        source,
    }
}

/// Drops an object's managed fields: for what a process keeps in memory and never applies back
/// (a cache, a merge base). With several field managers they are often most of an object.
pub fn forget_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStatus},
        core::v1::ConfigMap,
    };
    use kube::api::ObjectMeta;
    use serde_json::json;

    #[test]
    fn params_force_apply_as_the_manager() {
        let pp = apply_params("edgefleet-rollout");
        assert_eq!(pp.field_manager.as_deref(), Some("edgefleet-rollout"));
        assert!(pp.force);
    }

    #[test]
    fn body_keeps_owned_fields_and_drops_server_ones() {
        let read_back = Deployment {
            metadata: ObjectMeta {
                name: Some("old-name".into()),
                namespace: Some("elsewhere".into()),
                uid: Some("1234".into()),
                resource_version: Some("42".into()),
                generation: Some(3),
                labels: Some([("app".to_owned(), "toll".to_owned())].into()),
                finalizers: Some(vec!["edgefleet.io/cleanup".into()]),
                managed_fields: Some(vec![Default::default()]),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                replicas: Some(2),
                ..Default::default()
            }),
        };
        let body = apply_body("gantry", Some("province-a"), &read_back).unwrap();
        assert_eq!(
            body,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "gantry",
                    "namespace": "province-a",
                    "labels": {"app": "toll"},
                    "finalizers": ["edgefleet.io/cleanup"],
                },
                "spec": {
                    "replicas": 2,
                    "selector": {},
                    "template": {},
                },
            })
        );
    }

    #[test]
    fn cluster_scoped_body_has_no_namespace() {
        let cm = ConfigMap {
            data: Some([("k".to_owned(), "v".to_owned())].into()),
            ..Default::default()
        };
        let body = apply_body("report", None, &cm).unwrap();
        assert_eq!(
            body,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "report"},
                "data": {"k": "v"},
            })
        );
    }

    #[test]
    fn status_body_is_minimal() {
        let status = DeploymentStatus {
            ready_replicas: Some(1),
            ..Default::default()
        };
        let body = status_body::<Deployment, _>("gantry", &status).unwrap();
        assert_eq!(
            body,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "gantry"},
                "status": {"readyReplicas": 1},
            })
        );
        // Untyped status works too.
        let body = status_body::<Deployment, _>("gantry", &json!({"replicas": 0})).unwrap();
        assert_eq!(body["status"], json!({"replicas": 0}));
    }
}
