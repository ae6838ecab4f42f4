//! What goes on the wire to a node: the payload of a queued message, the delivered kinds, and
//! the rules of the acked version (pure; depends on nothing else of the hub).

use std::sync::Arc;

use edgefleet_api::objectsync::{
    DELIVERED_BY_CONTENT, ObjectSync, compare_resource_versions, content_version,
};
use edgefleet_channel::{Resource, ResourceType};
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::Value;

/// Field manager of the hub's writes.
pub const FIELD_MANAGER: &str = "edgefleet-hub";

/// One queued message's payload: which sync it serves and what to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub sync_namespace: String,
    pub sync_name: String,
    pub resource: Resource,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// insert / update: the object as cached (managedFields stripped).
    Object(Arc<DynamicObject>),
    /// delete: `{uid, name, namespace, resourceVersion}`.
    Delete(Arc<Value>),
}

impl Body {
    pub fn content(&self) -> Value {
        match self {
            Body::Object(o) => serde_json::to_value(&**o).unwrap_or(Value::Null),
            Body::Delete(v) => (**v).clone(),
        }
    }
}

/// The ApiResource of a delivered type.
pub fn api_resource(t: ResourceType) -> Option<ApiResource> {
    let (group, version, kind, plural) = match t {
        ResourceType::Pod => ("", "v1", "Pod", "pods"),
        ResourceType::ConfigMap => ("", "v1", "ConfigMap", "configmaps"),
        ResourceType::Secret => ("", "v1", "Secret", "secrets"),
        ResourceType::Device => ("devices.kubeedge.io", "v1beta1", "Device", "devices"),
        ResourceType::DeviceModel => (
            "devices.kubeedge.io",
            "v1beta1",
            "DeviceModel",
            "devicemodels",
        ),
        _ => return None,
    };
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(ApiResource {
        group: group.into(),
        version: version.into(),
        api_version,
        kind: kind.into(),
        plural: plural.into(),
    })
}

/// The delivered types, in the order their watchers start.
pub const DELIVERED: [ResourceType; 5] = [
    ResourceType::Pod,
    ResourceType::ConfigMap,
    ResourceType::Secret,
    ResourceType::Device,
    ResourceType::DeviceModel,
];

/// The acked resourceVersion of a sync ("" = nothing acked).
pub fn acked_rv(sync: &ObjectSync) -> &str {
    match sync
        .status
        .as_ref()
        .and_then(|s| s.object_resource_version.as_deref())
    {
        None | Some("0") => "",
        Some(rv) => rv,
    }
}

/// Whether objects of `kind` are delivered by content: a change of their status alone is not
/// delivered (see `edgefleet_api::objectsync::content_version`).
pub fn by_content(kind: &str) -> bool {
    DELIVERED_BY_CONTENT.contains(&kind)
}

/// The acked content version of a sync, if any.
pub fn acked_content(sync: &ObjectSync) -> Option<&str> {
    sync.status
        .as_ref()
        .and_then(|s| s.object_content_version.as_deref())
}

/// The content version to record with an ACK: that of the object sent, when its kind is
/// delivered by content and the edge stored exactly the version sent.
pub fn content_version_of(t: ResourceType, body: &Body, stored_rv: &str) -> Option<String> {
    let Body::Object(obj) = body else {
        return None;
    };
    let delivered_by_content = DELIVERED_BY_CONTENT
        .iter()
        .any(|k| ResourceType::of_kind(k) == Some(t));
    if !delivered_by_content || obj.resource_version().as_deref() != Some(stored_rv) {
        return None;
    }
    content_version(&obj.metadata)
}

/// Whether `new` moves the acked version forward from `acked` (only ever grows; versions
/// without an order never move it, except from nothing acked).
pub fn grows(acked: &str, new: &str) -> bool {
    if new.is_empty() {
        return false;
    }
    if acked.is_empty() || acked == "0" {
        return true;
    }
    compare_resource_versions(new, acked) == Some(std::cmp::Ordering::Greater)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(t: ResourceType, rv: &str) -> Body {
        let ar = api_resource(t).unwrap();
        let mut o = DynamicObject::new("x", &ar).within("ns");
        o.metadata.resource_version = Some(rv.into());
        o.metadata.generation = Some(1);
        Body::Object(Arc::new(o))
    }

    #[test]
    fn an_ack_carries_a_content_version_for_devices_stored_as_sent() {
        // (case, kind, version sent, version the edge stored, content version recorded?)
        let cases = [
            (
                "a Device stored as sent",
                ResourceType::Device,
                "7",
                "7",
                true,
            ),
            (
                "a Device stored at another version",
                ResourceType::Device,
                "7",
                "9",
                false,
            ),
            ("a ConfigMap", ResourceType::ConfigMap, "7", "7", false),
            ("a DeviceModel", ResourceType::DeviceModel, "7", "7", false),
        ];
        for (case, t, sent, stored, recorded) in cases {
            let got = content_version_of(t, &object(t, sent), stored);
            assert_eq!(got.is_some(), recorded, "{case}: {got:?}");
        }
        let delete = Body::Delete(Arc::new(serde_json::json!({})));
        assert_eq!(content_version_of(ResourceType::Device, &delete, "7"), None);
    }
}
