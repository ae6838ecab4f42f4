//! `ObjectSync` (namespaced) and `ClusterObjectSync` (cluster-scoped) in
//! reliablesyncs.kubeedge.io/v1alpha1, compatible with KubeEdge
//! (`staging/src/github.com/kubeedge/api/apis/reliablesyncs/v1alpha1/type.go`,
//! `build/crds/reliablesyncs/`).
//!
//! One sync records that one object was delivered to one edge node, and which resourceVersion of
//! it the node acknowledged.
//!
//! **Name.** `<nodeName>.<objectUID>`, KubeEdge's convention. Node names may contain dots and
//! UIDs never do, so the node is everything before the *last* dot ([`node_name_of`]). The API
//! server does not check the format: KubeEdge does not either, and a check would reject objects
//! KubeEdge created.
//!
//! **Label.** edgefleet also labels every sync with [`NODE_LABEL`]`=<nodeName>`, so one node's
//! syncs are found with a label selector instead of a scan of every sync (KubeEdge rescans all
//! syncs on every node delete). Syncs KubeEdge created lack the label until edgefleet adopts them.
//!
//! **Status.** KubeEdge's `objectResourceVersion` (the acked version; it only ever grows, compare
//! with [`compare_resource_versions`]) plus edgefleet's optional `attempts`, `lastAttemptTime`,
//! `conditions` (`Delivered`) and `observedGeneration`, which KubeEdge clients ignore.

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group both kinds live in (KubeEdge's).
pub const GROUP: &str = "reliablesyncs.kubeedge.io";
/// The API version both kinds are served and stored as.
pub const VERSION: &str = "v1alpha1";

/// Label carrying the node a sync belongs to, so a node's syncs are found by label selector.
pub const NODE_LABEL: &str = "edgefleet.io/node";

/// Label carrying the UID of the object a sync tracks.
pub const OBJECT_UID_LABEL: &str = "edgefleet.io/object-uid";

/// The finalizer every sync carries until the edge acknowledged the object's delete: objectsync
/// sets it, the hub removes it.
pub const FINALIZER: &str = "edgefleet.io/edge-delete";

/// Annotation asking the hub to re-queue a sync; its value is the RFC 3339 time of the ask.
/// objectsync writes it, the hub reacts to its change.
pub const RESYNC_ANNOTATION: &str = "edgefleet.io/resync-requested";

/// Label every edge node carries (the hub sets it at registration, objectsync selects by it).
pub const EDGE_ROLE_LABEL: &str = "node-role.kubernetes.io/edge";

/// Condition type: the node acknowledged the object's current resourceVersion.
pub const CONDITION_DELIVERED: &str = "Delivered";

/// Message of the CEL rule that keeps `spec` unchanged after creation.
pub const SPEC_IMMUTABLE_MESSAGE: &str =
    "spec is immutable: a sync tracks one object for one node; delete it and create a new one";

fn spec_immutable_rule() -> Rule {
    Rule::new("self == oldSelf").message(SPEC_IMMUTABLE_MESSAGE)
}

/// An ObjectSync records that one namespaced object (a Pod, ConfigMap, Secret, Device, ...) was
/// delivered to one edge node, and the resourceVersion of it the node acknowledged.
///
/// Its name is `<nodeName>.<objectUID>` (node names may contain dots, UIDs never do); it lives in
/// the object's namespace and carries the label `edgefleet.io/node=<nodeName>`. The spec cannot
/// change after creation.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "reliablesyncs.kubeedge.io",
    version = "v1alpha1",
    kind = "ObjectSync",
    namespaced,
    status = "ObjectSyncStatus",
    derive = "PartialEq",
    derive = "Default",
    category = "kubeedge",
    doc = "ObjectSync records that one namespaced object was delivered to one edge node and which resourceVersion the node acknowledged. Name: <nodeName>.<objectUID>; label edgefleet.io/node=<nodeName> (KubeEdge compatible).",
    selectable = ".spec.objectKind",
    selectable = ".spec.objectName",
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".metadata.labels.edgefleet\\.io/node"}"#,
    printcolumn = r#"{"name": "Kind", "type": "string", "jsonPath": ".spec.objectKind"}"#,
    printcolumn = r#"{"name": "Object", "type": "string", "jsonPath": ".spec.objectName"}"#,
    printcolumn = r#"{"name": "Acked RV", "type": "string", "jsonPath": ".status.objectResourceVersion", "description": "resourceVersion of the object the node acknowledged"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = spec_immutable_rule())]
#[serde(rename_all = "camelCase")]
pub struct ObjectSyncSpec {
    /// apiVersion of the delivered object, for example `v1` or `devices.kubeedge.io/v1beta1`.
    #[serde(
        rename = "objectAPIVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub object_api_version: Option<String>,

    /// Kind of the delivered object, for example `Pod`. Immutable, like the whole spec.
    #[schemars(length(min = 1))]
    pub object_kind: String,

    /// Name of the delivered object, in the sync's namespace.
    #[schemars(length(min = 1))]
    pub object_name: String,
}

/// A ClusterObjectSync records that one cluster-scoped object was delivered to one edge node, and
/// the resourceVersion of it the node acknowledged.
///
/// Its name is `<nodeName>.<objectUID>` (node names may contain dots, UIDs never do) and it
/// carries the label `edgefleet.io/node=<nodeName>`. The spec cannot change after creation.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "reliablesyncs.kubeedge.io",
    version = "v1alpha1",
    kind = "ClusterObjectSync",
    status = "ObjectSyncStatus",
    derive = "PartialEq",
    derive = "Default",
    category = "kubeedge",
    doc = "ClusterObjectSync records that one cluster-scoped object was delivered to one edge node and which resourceVersion the node acknowledged. Name: <nodeName>.<objectUID>; label edgefleet.io/node=<nodeName> (KubeEdge compatible).",
    selectable = ".spec.objectKind",
    selectable = ".spec.objectName",
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".metadata.labels.edgefleet\\.io/node"}"#,
    printcolumn = r#"{"name": "Kind", "type": "string", "jsonPath": ".spec.objectKind"}"#,
    printcolumn = r#"{"name": "Object", "type": "string", "jsonPath": ".spec.objectName"}"#,
    printcolumn = r#"{"name": "Acked RV", "type": "string", "jsonPath": ".status.objectResourceVersion", "description": "resourceVersion of the object the node acknowledged"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = spec_immutable_rule())]
#[serde(rename_all = "camelCase")]
pub struct ClusterObjectSyncSpec {
    /// apiVersion of the delivered object, for example `v1`.
    #[serde(
        rename = "objectAPIVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub object_api_version: Option<String>,

    /// Kind of the delivered object, for example `Node`. Immutable, like the whole spec.
    #[schemars(length(min = 1))]
    pub object_kind: String,

    /// Name of the delivered object.
    #[schemars(length(min = 1))]
    pub object_name: String,
}

/// Delivery state of the object on the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSyncStatus {
    /// resourceVersion of the object the node acknowledged (KubeEdge's field; `"0"` until the
    /// first ACK). It only ever grows: a late ACK of an older version never moves it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_resource_version: Option<String>,

    /// How many times the current version was sent without an ACK (edgefleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub attempts: Option<i64>,

    /// When the current version was last sent (edgefleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,

    /// `Delivered`: whether the node acknowledged the object's current resourceVersion
    /// (edgefleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// The `metadata.generation` the objectsync controller last acted on (edgefleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,

    /// For kinds whose status the edge does not act on (Devices): the [`content_version`] of
    /// the version the node acknowledged. A later version with the same content version differs
    /// only in its status, so the node holds it already (edgefleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub object_content_version: Option<String>,
}

/// Kinds delivered by content: a change of their status alone is not delivered, and the
/// node's copy counts as current while its [`content_version`] matches. A Device's status is
/// written by the hub (reports) and the device operator (conditions); the edge acts on its
/// spec and metadata only.
pub const DELIVERED_BY_CONTENT: &[&str] = &["Device"];

/// What the edge acts on in an object whose status it does not need, as a version:
/// `<metadata.generation>-<FNV-1a 64 of its labels and annotations, hex>`. The API server
/// moves the generation on every spec change (never on status writes) and never back, so two
/// versions with equal content versions have the same spec; the digest covers labels and
/// annotations (the device operator re-delivers Devices through an annotation). `None` without
/// a generation: compare resourceVersions then.
pub fn content_version(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    use std::hash::Hasher;
    let generation = meta.generation?;
    let mut h = fnv::FnvHasher::default();
    // BTreeMaps: serialised in key order, the same bytes on every replica and version.
    for map in [&meta.labels, &meta.annotations] {
        for (k, v) in map.iter().flatten() {
            h.write(k.as_bytes());
            h.write(&[0]);
            h.write(v.as_bytes());
            h.write(&[0]);
        }
        h.write(&[0xff]);
    }
    Some(format!("{generation}-{:016x}", h.finish()))
}

/// The name of the sync recording `uid`'s delivery to `node`: `<node>.<uid>`.
pub fn sync_name(node: &str, uid: &str) -> String {
    format!("{node}.{uid}")
}

/// The node a sync named `<node>.<uid>` belongs to: everything before the last dot. `None` when
/// the name has no dot or either side is empty.
pub fn node_name_of(sync_name: &str) -> Option<&str> {
    split_sync_name(sync_name).map(|(node, _)| node)
}

/// The UID of the object a sync named `<node>.<uid>` tracks: everything after the last dot.
pub fn object_uid_of(sync_name: &str) -> Option<&str> {
    split_sync_name(sync_name).map(|(_, uid)| uid)
}

fn split_sync_name(name: &str) -> Option<(&str, &str)> {
    let (node, uid) = name.rsplit_once('.')?;
    (!node.is_empty() && !uid.is_empty()).then_some((node, uid))
}

/// Orders two resourceVersions numerically when both are plain decimal `u64`s (what
/// kube-apiserver backed by etcd hands out). Anything else (empty, signs, spaces, overflow, an
/// opaque version from another storage) gives `None`: the caller must not guess an order, and
/// this never panics.
pub fn compare_resource_versions(a: &str, b: &str) -> Option<Ordering> {
    Some(parse_resource_version(a)?.cmp(&parse_resource_version(b)?))
}

fn parse_resource_version(rv: &str) -> Option<u64> {
    if rv.is_empty() || !rv.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rv.parse().ok()
}

impl ObjectSync {
    /// The node this sync belongs to: the [`NODE_LABEL`] label when set, else parsed from the name.
    pub fn node_name(&self) -> Option<&str> {
        node_of(&self.metadata)
    }
}

impl ClusterObjectSync {
    /// The node this sync belongs to: the [`NODE_LABEL`] label when set, else parsed from the name.
    pub fn node_name(&self) -> Option<&str> {
        node_of(&self.metadata)
    }
}

fn node_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(NODE_LABEL))
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| node_name_of(meta.name.as_deref()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    const KUBEEDGE_SYNC: &str = include_str!("../../../e2e/testdata/kubeedge/objectsync.yaml");
    const SAMPLE_SYNC: &str = include_str!("../../../config/samples/objectsync_objectsync.yaml");

    #[test]
    fn sync_names_split_on_the_last_dot() {
        let uid = "6f1c3a52-8d0e-4c55-9a3e-1b2c3d4e5f60";
        assert_eq!(sync_name("edge-0000", uid), format!("edge-0000.{uid}"));
        assert_eq!(
            node_name_of(&sync_name("edge-0000", uid)),
            Some("edge-0000")
        );
        assert_eq!(
            node_name_of(&format!("edge.node.example.{uid}")),
            Some("edge.node.example")
        );
        assert_eq!(
            object_uid_of(&format!("edge.node.example.{uid}")),
            Some(uid)
        );
        for bad in ["", "no-dot", ".uid", "node.", "."] {
            assert_eq!(node_name_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn resource_versions_compare_without_panicking() {
        use Ordering::*;
        assert_eq!(compare_resource_versions("9", "10"), Some(Less));
        assert_eq!(compare_resource_versions("10", "9"), Some(Greater));
        assert_eq!(compare_resource_versions("0", "0"), Some(Equal));
        assert_eq!(compare_resource_versions("007", "7"), Some(Equal));
        assert_eq!(
            compare_resource_versions("18446744073709551615", "18446744073709551614"),
            Some(Greater)
        );
        for (a, b) in [
            ("", "1"),
            ("1", ""),
            ("+1", "2"),
            ("-1", "2"),
            (" 1", "2"),
            ("1.5", "2"),
            ("abc", "1"),
            ("18446744073709551616", "1"),
            ("١", "1"),
        ] {
            assert_eq!(compare_resource_versions(a, b), None, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn node_comes_from_the_label_then_the_name() {
        let mut sync: ObjectSync = serde_yaml::from_str(SAMPLE_SYNC).unwrap();
        assert_eq!(sync.node_name(), Some("edge-0000"));
        sync.metadata.labels = None;
        assert_eq!(sync.node_name(), Some("edge-0000"));
        sync.metadata.name = Some("unparsable".into());
        assert_eq!(sync.node_name(), None);
    }

    fn schema_of(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Value {
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn crds_are_kubeedge_shaped_with_immutable_spec() {
        for (crd, scope) in [
            (ObjectSync::crd(), "Namespaced"),
            (ClusterObjectSync::crd(), "Cluster"),
        ] {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.versions[0].name, VERSION);
            assert_eq!(crd.spec.scope, scope);
            let version = &crd.spec.versions[0];
            assert!(version.subresources.as_ref().unwrap().status.is_some());
            let columns: Vec<_> = version
                .additional_printer_columns
                .as_ref()
                .unwrap()
                .iter()
                .map(|c| (c.name.as_str(), c.json_path.as_str()))
                .collect();
            assert_eq!(
                columns,
                [
                    ("Node", ".metadata.labels.edgefleet\\.io/node"),
                    ("Kind", ".spec.objectKind"),
                    ("Object", ".spec.objectName"),
                    ("Acked RV", ".status.objectResourceVersion"),
                    ("Age", ".metadata.creationTimestamp"),
                ]
            );
            let schema = schema_of(&crd);
            let spec = &schema["properties"]["spec"];
            assert_eq!(
                spec["x-kubernetes-validations"],
                json!([{"rule": "self == oldSelf", "message": SPEC_IMMUTABLE_MESSAGE}])
            );
            assert_eq!(spec["required"], json!(["objectKind", "objectName"]));
            for field in ["objectAPIVersion", "objectKind", "objectName"] {
                assert_eq!(spec["properties"][field]["type"], "string", "{field}");
            }
            let status = &schema["properties"]["status"]["properties"];
            assert_eq!(status["objectResourceVersion"]["type"], "string");
            assert_eq!(status["attempts"]["minimum"], 0.0);
            assert_eq!(status["lastAttemptTime"]["format"], "date-time");
            assert_eq!(
                status["conditions"]["x-kubernetes-list-map-keys"],
                json!(["type"])
            );
        }
    }

    #[test]
    fn kubeedge_sync_round_trips() {
        let original: Value = serde_yaml::from_str(KUBEEDGE_SYNC).unwrap();
        let sync: ObjectSync = serde_json::from_value(original.clone()).unwrap();
        assert_eq!(
            sync.status
                .as_ref()
                .unwrap()
                .object_resource_version
                .as_deref(),
            Some("0")
        );
        let back = serde_json::to_value(&sync).unwrap();
        assert_eq!(back["spec"], original["spec"]);
        assert_eq!(back["status"], original["status"]);
        assert_eq!(back["metadata"]["name"], original["metadata"]["name"]);
        // KubeEdge sets no label; the node still comes from the name.
        assert_eq!(
            sync.node_name(),
            node_name_of(sync.metadata.name.as_deref().unwrap())
        );
    }

    #[test]
    fn our_status_fields_are_optional_and_skipped() {
        let status = ObjectSyncStatus {
            object_resource_version: Some("42".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json!({"objectResourceVersion": "42"})
        );
    }

    #[test]
    fn content_version_moves_with_generation_labels_and_annotations_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let meta =
            |generation: Option<i64>, rv: &str, labels: &[(&str, &str)], ann: &[(&str, &str)]| {
                let map = |kv: &[(&str, &str)]| {
                    (!kv.is_empty()).then(|| {
                        kv.iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    })
                };
                ObjectMeta {
                    generation,
                    resource_version: Some(rv.into()),
                    labels: map(labels),
                    annotations: map(ann),
                    ..Default::default()
                }
            };
        let base = content_version(&meta(Some(3), "10", &[("a", "1")], &[("m", "2")])).unwrap();
        assert!(base.starts_with("3-") && base.len() == 2 + 16, "{base}");
        // (case, meta, same content version as base?)
        let cases = [
            (
                "a status write: new resourceVersion",
                meta(Some(3), "11", &[("a", "1")], &[("m", "2")]),
                true,
            ),
            (
                "a spec change: new generation",
                meta(Some(4), "12", &[("a", "1")], &[("m", "2")]),
                false,
            ),
            (
                "a model change: the annotation moved",
                meta(Some(3), "13", &[("a", "1")], &[("m", "3")]),
                false,
            ),
            (
                "a label changed",
                meta(Some(3), "14", &[("a", "2")], &[("m", "2")]),
                false,
            ),
            (
                "a label moved to the annotations",
                meta(Some(3), "15", &[], &[("a", "1"), ("m", "2")]),
                false,
            ),
        ];
        for (case, m, same) in cases {
            assert_eq!(
                content_version(&m).as_deref() == Some(base.as_str()),
                same,
                "{case}"
            );
        }
        assert_eq!(
            content_version(&meta(None, "1", &[], &[])),
            None,
            "no generation: no content version"
        );
    }
}
