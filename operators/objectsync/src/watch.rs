//! Watches that keep the [`Index`](crate::index::Index): each object reduced to the few fields
//! a decision reads, on arrival, so memory stays flat at 500,000 pods. ConfigMaps, Secrets,
//! DeviceModels and Nodes are watched as metadata only; Pods (bound ones only), Devices and
//! ObjectSyncs in full (their spec or status is needed), each reduced at once.
//!
//! A relist (the watch restarted) is buffered and swapped in whole: objects missing from it
//! were deleted meanwhile, and count as deleted.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use edgefleet_api::devices::Device;
use edgefleet_api::objectsync::{
    NODE_LABEL, ObjectSync, content_version, node_name_of, object_uid_of,
};
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};

use crate::controller::Shared;
use crate::index::{DeviceEntry, Index, Key, Live, NodeEntry, PodEntry, SyncEntry, Touched};
use crate::plan::{FINALIZER, MAX_LABEL_VALUE, OBJECT_UID_LABEL, RESYNC_ANNOTATION};
use crate::refs::{Kind, pod_references};

/// The label that makes a node an edge node.
pub use edgefleet_api::objectsync::EDGE_ROLE_LABEL;

/// One table of the index, and how its entries are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Pods,
    ConfigMaps,
    Secrets,
    Devices,
    DeviceModels,
    Nodes,
    Syncs,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Pods,
        Table::ConfigMaps,
        Table::Secrets,
        Table::Devices,
        Table::DeviceModels,
        Table::Nodes,
        Table::Syncs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Pods => "pods",
            Table::ConfigMaps => "configmaps",
            Table::Secrets => "secrets",
            Table::Devices => "devices",
            Table::DeviceModels => "devicemodels",
            Table::Nodes => "nodes",
            Table::Syncs => "objectsyncs",
        }
    }
}

/// A reduced object of one table.
#[derive(Debug, Clone)]
pub enum Entry {
    Pod(PodEntry),
    Live(Live),
    Device(DeviceEntry),
    Node(NodeEntry),
    Sync(SyncEntry),
}

/// Sets `key` of `table` to `entry` (`None`: gone). An entry of the wrong shape counts as gone.
pub fn set(index: &mut Index, table: Table, key: Key, entry: Option<Entry>) -> Touched {
    match (table, entry) {
        (Table::Pods, Some(Entry::Pod(e))) => index.set_pod(key, Some(e)),
        (Table::Pods, _) => index.set_pod(key, None),
        (Table::ConfigMaps, e) => index.set_referenced(Kind::ConfigMap, key, live(e)),
        (Table::Secrets, e) => index.set_referenced(Kind::Secret, key, live(e)),
        (Table::Devices, Some(Entry::Device(e))) => index.set_device(key, Some(e)),
        (Table::Devices, _) => index.set_device(key, None),
        (Table::DeviceModels, e) => index.set_model(key, live(e)),
        (Table::Nodes, Some(Entry::Node(e))) => index.set_node(&key.1, Some(e)),
        (Table::Nodes, _) => index.set_node(&key.1, None),
        (Table::Syncs, Some(Entry::Sync(e))) => index.set_sync(key, Some(e)),
        (Table::Syncs, _) => index.set_sync(key, None),
    }
}

fn live(entry: Option<Entry>) -> Option<Live> {
    match entry {
        Some(Entry::Live(l)) => Some(l),
        _ => None,
    }
}

fn keys(index: &Index, table: Table) -> Vec<Key> {
    match table {
        Table::Pods => index.pod_keys(),
        Table::ConfigMaps => index.referenced_keys(Kind::ConfigMap),
        Table::Secrets => index.referenced_keys(Kind::Secret),
        Table::Devices => index.device_keys(),
        Table::DeviceModels => index.model_keys(),
        Table::Nodes => index.node_names(),
        Table::Syncs => index.sync_keys(),
    }
}

/// Whether `key` belongs to the watch of `scope` (`None`: every namespace).
fn in_scope(key: &Key, scope: Option<&str>) -> bool {
    scope.is_none_or(|ns| key.0 == ns)
}

fn key_of<K: ResourceExt>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn live_of<K: ResourceExt>(obj: &K, now: Timestamp) -> Option<Live> {
    Some(Live {
        uid: obj.uid()?,
        rv: obj.resource_version().unwrap_or_default(),
        content: None,
        changed: now,
    })
}

/// A bound pod: its node and references.
pub fn pod_entry(pod: &Pod, now: Timestamp) -> Option<Entry> {
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
    Some(Entry::Pod(PodEntry {
        live: live_of(pod, now)?,
        node,
        refs: pod_references(spec),
    }))
}

/// Identity and version of an object watched as metadata only.
pub fn meta_entry<K: kube::Resource>(obj: &PartialObjectMeta<K>, now: Timestamp) -> Option<Entry> {
    live_of(obj, now).map(Entry::Live)
}

pub fn device_entry(device: &Device, now: Timestamp) -> Option<Entry> {
    let mut live = live_of(device, now)?;
    live.content = content_version(&device.metadata);
    Some(Entry::Device(DeviceEntry {
        live,
        node: device.spec.node_name.clone().filter(|n| !n.is_empty()),
        model: device.spec.device_model_ref.name.clone(),
    }))
}

pub fn node_entry<K: kube::Resource>(
    node: &PartialObjectMeta<K>,
    _now: Timestamp,
) -> Option<Entry> {
    Some(Entry::Node(NodeEntry {
        edge: node.labels().contains_key(EDGE_ROLE_LABEL),
    }))
}

/// What the operator reads of a sync. The node and UID come from the name (`<node>.<uid>`),
/// which every sync has (KubeEdge's carry no labels); a sync whose name does not parse is not
/// this operator's business.
pub fn sync_entry(sync: &ObjectSync, _now: Timestamp) -> Option<Entry> {
    let name = sync.name_any();
    let node = node_name_of(&name)?.to_owned();
    let uid = object_uid_of(&name)?.to_owned();
    let labels = sync.labels();
    let node_labelled = if node.len() > MAX_LABEL_VALUE {
        true
    } else {
        labels.get(NODE_LABEL) == Some(&node)
    };
    let finalizers = sync.finalizers().to_vec();
    let adopted = node_labelled
        && labels.get(OBJECT_UID_LABEL) == Some(&uid)
        && finalizers.iter().any(|f| f == FINALIZER);
    let status = sync.status.as_ref();
    Some(Entry::Sync(SyncEntry {
        namespace: sync.namespace().unwrap_or_default(),
        node,
        uid,
        kind: Kind::parse(&sync.spec.object_kind),
        object_name: sync.spec.object_name.clone(),
        acked: status.and_then(|s| s.object_resource_version.clone()),
        acked_content: status.and_then(|s| s.object_content_version.clone()),
        last_attempt: status
            .and_then(|s| s.last_attempt_time.as_ref())
            .map(|t| t.0),
        created: sync.metadata.creation_timestamp.as_ref().map(|t| t.0),
        resync_requested: sync
            .annotations()
            .get(RESYNC_ANNOTATION)
            .and_then(|v| v.parse().ok()),
        deleting: sync.metadata.deletion_timestamp.is_some(),
        finalizers,
        adopted,
        name,
    }))
}

/// Feeds one watch into the index until the stream ends, queueing the nodes each change
/// affects. Marks `table` synced in `scope` after its first complete list. A (re-)list
/// replaces only what lies in `scope` (its namespace, or everything for `None`): with one watch
/// per watched namespace, a relist of one never drops what the others hold.
pub async fn drive<K, S>(
    table: Table,
    scope: Option<String>,
    stream: S,
    reduce: fn(&K, Timestamp) -> Option<Entry>,
    shared: Arc<Shared>,
) where
    K: ResourceExt + Debug,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut buffer: Option<HashMap<Key, Entry>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(table = table.name(), %error, "watch failed; retrying");
                shared
                    .metrics
                    .watch_errors
                    .with_label_values(&[table.name()])
                    .inc();
                continue;
            }
        };
        let now = Timestamp::now();
        match event {
            Event::Init => buffer = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let (Some(buf), Some(entry)) = (buffer.as_mut(), reduce(&obj, now)) {
                    buf.insert(key_of(&obj), entry);
                }
            }
            Event::InitDone => {
                let listed = buffer.take().unwrap_or_default();
                let touched = {
                    let mut index = shared.lock_index();
                    let mut touched = Touched::default();
                    for key in keys(&index, table) {
                        if in_scope(&key, scope.as_deref()) && !listed.contains_key(&key) {
                            touched.merge(set(&mut index, table, key, None));
                        }
                    }
                    for (key, entry) in listed {
                        touched.merge(set(&mut index, table, key, Some(entry)));
                    }
                    touched
                };
                shared.enqueue(&touched);
                shared.mark_synced(table, scope.clone());
            }
            Event::Apply(obj) => {
                let entry = reduce(&obj, now);
                let touched = set(&mut shared.lock_index(), table, key_of(&obj), entry);
                shared.enqueue(&touched);
            }
            Event::Delete(obj) => {
                let touched = set(&mut shared.lock_index(), table, key_of(&obj), None);
                shared.enqueue(&touched);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn syncs_are_read_from_their_name_labels_and_status() {
        let sync: ObjectSync = serde_json::from_value(json!({
            "apiVersion": "reliablesyncs.kubeedge.io/v1alpha1",
            "kind": "ObjectSync",
            "metadata": {
                "name": "edge.a.uid-1", "namespace": "ns",
                "labels": {NODE_LABEL: "edge.a", OBJECT_UID_LABEL: "uid-1"},
                "annotations": {RESYNC_ANNOTATION: "2027-01-15T08:00:00Z"},
                "finalizers": [FINALIZER],
                "creationTimestamp": "2027-01-15T07:00:00Z"
            },
            "spec": {"objectAPIVersion": "v1", "objectKind": "configmap", "objectName": "cm"},
            "status": {"objectResourceVersion": "42", "lastAttemptTime": "2027-01-15T07:30:00Z"}
        }))
        .unwrap();
        let Some(Entry::Sync(s)) = sync_entry(&sync, now()) else {
            panic!("not a sync entry");
        };
        assert_eq!((s.node.as_str(), s.uid.as_str()), ("edge.a", "uid-1"));
        assert_eq!(s.kind, Some(Kind::ConfigMap));
        assert_eq!(s.acked.as_deref(), Some("42"));
        assert!(s.adopted && !s.deleting);
        assert_eq!(
            s.resync_requested,
            Some("2027-01-15T08:00:00Z".parse().unwrap())
        );
        assert!(s.last_attempt > s.created);

        // KubeEdge's own: no labels, no finalizer; node from the name.
        let kubeedge: ObjectSync = serde_yaml::from_str(include_str!(
            "../../../e2e/testdata/kubeedge/objectsync.yaml"
        ))
        .unwrap();
        let Some(Entry::Sync(s)) = sync_entry(&kubeedge, now()) else {
            panic!("not a sync entry");
        };
        assert_eq!(s.node, "edge-node");
        assert!(!s.adopted);
        assert_eq!(s.acked.as_deref(), Some("0"));
    }

    #[test]
    fn unparsable_sync_names_and_unbound_pods_are_skipped() {
        let sync: ObjectSync = serde_json::from_value(json!({
            "metadata": {"name": "nodot", "namespace": "ns"},
            "spec": {"objectKind": "Pod", "objectName": "p"}
        }))
        .unwrap();
        assert!(sync_entry(&sync, now()).is_none());
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
            "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap();
        assert!(pod_entry(&pod, now()).is_none());
    }
}
