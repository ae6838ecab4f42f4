//! What the caches keep of a pod and of a node: the fields the plan reads, deserialized
//! straight from the API's JSON, so the rest of the object is never held — not even while an
//! event is decoded.
//!
//! Why not a stripped `Pod`: k8s-openapi's structs are wide (a `Pod` is 2.4 KiB before any of
//! its contents, a `Container` 2.3 KiB, and serde leaves each `Vec` room for four), so a pod
//! with every optional field cleared still took ~12 KiB and a node ~4.5 KiB. At 3,000 nodes
//! that was half the operator's memory. These types take a fraction (see the size test).
//!
//! The field names are the API's, so code reads `pod.spec`, `pod.status` as it would a `Pod`;
//! pods the operator fetches or writes through the API stay `Pod`.

use k8s_openapi::api::core::v1::{Affinity, ContainerState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;
use std::borrow::Cow;

/// A pod as the caches keep it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<CachedPodSpec>,
    pub status: Option<CachedPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    pub node_name: Option<String>,
    /// Kept for the node a DaemonSet pinned an unscheduled pod to ([`CachedPod::intended_node`]).
    pub affinity: Option<Affinity>,
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedContainer {
    pub name: String,
    pub image: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub conditions: Option<Vec<CachedCondition>>,
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
}

/// A pod's or a node's condition.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub last_transition_time: Option<Time>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedContainerStatus {
    pub name: String,
    /// Filled by the kubelet once the image is on the node.
    #[serde(rename = "imageID", default)]
    pub image_id: String,
    pub state: Option<ContainerState>,
}

impl CachedPod {
    /// Where the pod runs or will run ([`edgefleet_kit::pods::intended_node`]).
    pub fn intended_node(&self) -> Option<String> {
        let spec = self.spec.as_ref()?;
        edgefleet_kit::pods::intended_node_of(spec.node_name.as_ref(), spec.affinity.as_ref())
    }

    /// Drops what decoding could not skip and the room serde left in each list. Run on every
    /// object before the cache takes it.
    pub fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.containers.shrink_to_fit();
        }
        if let Some(status) = self.status.as_mut() {
            // Only Ready is read (since when the pod is Ready).
            if let Some(cs) = status.conditions.as_mut() {
                cs.retain(|c| c.type_ == "Ready");
                cs.shrink_to_fit();
            }
            if let Some(cs) = status.container_statuses.as_mut() {
                cs.shrink_to_fit();
            }
        }
    }
}

/// A node as the caches keep it: its labels (batches, node selectors) and whether it is Ready.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedNode {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub status: Option<CachedNodeStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedNodeStatus {
    pub conditions: Option<Vec<CachedCondition>>,
}

impl CachedNode {
    /// Is the node Ready?
    pub fn ready(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }

    /// As [`CachedPod::trim`]; a node keeps only its Ready condition, without its times
    /// (heartbeats would make every copy differ).
    pub fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        self.metadata.annotations = None;
        if let Some(cs) = self.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            cs.retain(|c| c.type_ == "Ready");
            for c in cs.iter_mut() {
                c.last_transition_time = None;
            }
            cs.shrink_to_fit();
        }
    }
}

fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if let Some(o) = meta.owner_references.as_mut() {
        o.shrink_to_fit();
    }
}

/// The API's identity of the cached types: they are read from the pods and nodes endpoints.
macro_rules! api_resource {
    ($ty:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("")
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v1")
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v1")
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
api_resource!(
    CachedPod,
    "Pod",
    "pods",
    k8s_openapi::NamespaceResourceScope
);
api_resource!(
    CachedNode,
    "Node",
    "nodes",
    k8s_openapi::ClusterResourceScope
);

#[cfg(test)]
pub mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    /// A pod as a test writes it (the API's JSON), as the cache would hold it.
    pub fn cached_pod(value: serde_json::Value) -> CachedPod {
        let mut pod: CachedPod = serde_json::from_value(value).expect("a pod");
        pod.trim();
        pod
    }

    /// A node as a test writes it, as the cache would hold it.
    pub fn cached_node(value: serde_json::Value) -> CachedNode {
        let mut node: CachedNode = serde_json::from_value(value).expect("a node");
        node.trim();
        node
    }

    /// A DaemonSet pod as the API serves it, with what the plan reads and what it does not.
    fn full_pod() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "app-x7k2p", "namespace": "toll", "uid": "u-1",
                "creationTimestamp": "2026-12-03T10:00:00Z",
                "labels": {"app": "toll", "controller-revision-hash": "6c9f"},
                "annotations": {"edgefleet.io/batch": "j/2",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "app",
                    "uid": "ds-1", "controller": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]
            },
            "spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name",
                    "operator": "In", "values": ["edge-0007"]}]}]}}},
                "containers": [{"name": "app", "image": "toll:1", "env": [{"name": "A", "value": "1"}],
                    "resources": {}, "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                "tolerations": [{"operator": "Exists"}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            },
            "status": {
                "phase": "Running", "hostIP": "10.0.0.7", "qosClass": "BestEffort",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-03T10:00:00Z"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-03T10:00:05Z"}
                ],
                "containerStatuses": [{"name": "app", "image": "toll:1", "imageID": "toll@sha256:1",
                    "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-12-03T10:00:04Z"}}}]
            }
        })
    }

    #[test]
    fn a_cached_pod_keeps_what_the_plan_reads() {
        let pod = cached_pod(full_pod());
        assert_eq!(pod.name_any(), "app-x7k2p");
        assert_eq!(pod.namespace().as_deref(), Some("toll"));
        assert_eq!(pod.uid().as_deref(), Some("u-1"));
        assert!(pod.metadata.creation_timestamp.is_some());
        assert_eq!(pod.labels().get("app").map(String::as_str), Some("toll"));
        assert_eq!(
            pod.annotations().len(),
            1,
            "last-applied dropped, ours kept"
        );
        assert_eq!(pod.owner_references()[0].uid, "ds-1");
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(
            pod.intended_node().as_deref(),
            Some("edge-0007"),
            "from affinity"
        );
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.containers[0].image.as_deref(), Some("toll:1"));
        let status = pod.status.as_ref().expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let conditions = status.conditions.as_ref().expect("conditions");
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "Ready");
        assert!(conditions[0].last_transition_time.is_some());
        let c = &status.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!(
            (c.name.as_str(), c.image_id.as_str()),
            ("app", "toll@sha256:1")
        );
        assert!(c.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    }

    #[test]
    fn a_bound_pod_is_on_its_node_and_a_bare_pod_on_none() {
        let mut value = full_pod();
        value["spec"]["nodeName"] = json!("edge-0001");
        assert_eq!(
            cached_pod(value).intended_node().as_deref(),
            Some("edge-0001")
        );
        let bare = cached_pod(json!({"metadata": {"name": "p"}}));
        assert_eq!(bare.intended_node(), None);
        assert!(bare.status.is_none());
    }

    #[test]
    fn a_cached_node_keeps_its_labels_and_readiness() {
        let node = cached_node(json!({
            "metadata": {"name": "edge-0001", "labels": {"station": "s1"},
                "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {"taints": []},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-12-03T10:00:00Z",
                        "lastTransitionTime": "2026-12-03T09:00:00Z"}
                ],
                "images": [{"names": ["toll:1"], "sizeBytes": 1}]
            }
        }));
        assert!(node.ready());
        assert_eq!(node.labels().get("station").map(String::as_str), Some("s1"));
        assert!(node.metadata.annotations.is_none());
        let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
        assert_eq!(conditions.map(Vec::len), Some(1));
        let not_ready = cached_node(json!({"metadata": {"name": "edge-0002"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}));
        assert!(!not_ready.ready());
        assert!(!cached_node(json!({"metadata": {"name": "edge-0003"}})).ready());
    }

    /// The reason these types exist: a pod as cached must stay small (a stripped `Pod` was
    /// ~12 KiB). Counts the object's inline size and its lists' capacity, not its strings.
    #[test]
    fn a_cached_pod_and_node_stay_small() {
        let pod = cached_pod(full_pod());
        let spec = pod.spec.as_ref().expect("spec");
        let status = pod.status.as_ref().expect("status");
        let lists = spec.containers.capacity() * size_of::<CachedContainer>()
            + status.conditions.as_ref().map_or(0, Vec::capacity) * size_of::<CachedCondition>()
            + status.container_statuses.as_ref().map_or(0, Vec::capacity)
                * size_of::<CachedContainerStatus>()
            + pod
                .metadata
                .owner_references
                .as_ref()
                .map_or(0, Vec::capacity)
                * size_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>();
        let bytes = size_of::<CachedPod>() + lists;
        assert!(
            bytes < 2048,
            "a cached pod takes {bytes} B before its strings"
        );
        assert!(size_of::<CachedNode>() < 512);
    }
}
