//! The operator's in-memory view of the cluster, kept by the watchers (see [`crate::watch`]):
//! only the few fields a decision reads, indexed by node so one node's desired set and syncs
//! are found without a scan. Every change reports the nodes it affects ([`Touched`]), which
//! is how an event becomes per-node work: never O(nodes × syncs).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use jiff::Timestamp;

use crate::refs::{Kind, Ref};

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
pub type Key = (String, String);

/// The identity and version of a live object the operator delivers, and when its version was
/// last seen to change (the resync window runs from there, so the hub gets a window to
/// deliver a change before the operator asks again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub uid: String,
    pub rv: String,
    /// For kinds delivered by content (Devices): what the edge acts on, as a version
    /// (`edgefleet_api::objectsync::content_version`). A new `rv` with the same content is a
    /// status write: nothing to deliver.
    pub content: Option<String>,
    pub changed: Timestamp,
}

/// A pod bound to a node, and what it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub live: Live,
    pub node: String,
    pub refs: Vec<Ref>,
}

/// A Device, the node it is bound to and its model's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub live: Live,
    pub node: Option<String>,
    pub model: String,
}

/// A node's name is its key; this is whether it carries the edge role label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeEntry {
    pub edge: bool,
}

/// What the operator reads of an ObjectSync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncEntry {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// The UID part of the name (`<node>.<uid>`).
    pub uid: String,
    /// `spec.objectKind`, parsed; `None` for kinds this operator does not deliver.
    pub kind: Option<Kind>,
    pub object_name: String,
    /// `status.objectResourceVersion`.
    pub acked: Option<String>,
    /// `status.objectContentVersion`.
    pub acked_content: Option<String>,
    pub last_attempt: Option<Timestamp>,
    pub created: Option<Timestamp>,
    /// The `edgefleet.io/resync-requested` annotation.
    pub resync_requested: Option<Timestamp>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
    /// Carries the node and object-uid labels and this operator's finalizer.
    pub adopted: bool,
}

/// Nodes to reconcile because of a change: `now`, or after the resync window (`later`: only a
/// version moved, which the hub delivers by itself; the operator checks once the window is
/// over).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    pub now: BTreeSet<String>,
    pub later: BTreeSet<String>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.now.is_empty() && self.later.is_empty()
    }

    pub fn merge(&mut self, other: Touched) {
        self.now.extend(other.now);
        self.later.extend(other.later);
    }
}

/// How an edge node stands, as far as its syncs are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Exists with the edge label: it needs its desired set.
    Edge,
    /// Exists without the edge label: it needs nothing, but may still hold a hub session, so
    /// its syncs are deleted the normal way (finalizer held until the hub's delete ACK).
    NotEdge,
    /// Deleted: no edge left to acknowledge anything; its syncs are removed outright.
    Gone,
}

/// One object a node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub namespace: String,
    pub kind: Kind,
    pub name: String,
    pub live: Live,
}

/// The indexed view. Not thread-safe by itself: the controller keeps it behind a mutex and
/// holds the lock only for in-memory work.
#[derive(Debug, Default)]
pub struct Index {
    pods: HashMap<Key, PodEntry>,
    pods_by_node: HashMap<String, HashSet<Key>>,
    /// `(kind, namespace, name)` of a ConfigMap/Secret → the pods referencing it.
    referrers: HashMap<(Kind, String, String), HashSet<Key>>,
    configmaps: HashMap<Key, Live>,
    secrets: HashMap<Key, Live>,
    devices: HashMap<Key, DeviceEntry>,
    devices_by_node: HashMap<String, HashSet<Key>>,
    /// DeviceModel key → the devices using it.
    model_users: HashMap<Key, HashSet<Key>>,
    models: HashMap<Key, Live>,
    nodes: HashMap<String, NodeEntry>,
    syncs: HashMap<Key, SyncEntry>,
    syncs_by_node: HashMap<String, HashSet<Key>>,
}

fn link<K: Eq + Hash, V: Eq + Hash>(map: &mut HashMap<K, HashSet<V>>, k: K, v: V) {
    map.entry(k).or_default().insert(v);
}

fn unlink<K: Eq + Hash, V: Eq + Hash>(map: &mut HashMap<K, HashSet<V>>, k: &K, v: &V) {
    if let Some(set) = map.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

/// Whether a version change alone (same identity) is all that differs.
fn only_version_moved(old: &Live, new: &Live) -> bool {
    old.uid == new.uid && old.rv != new.rv
}

/// Whether `new` holds nothing to deliver beyond `old`: the same version, or for kinds
/// delivered by content the same content (a status write).
fn same_content(old: &Live, new: &Live) -> bool {
    old.uid == new.uid
        && (old.rv == new.rv || (new.content.is_some() && old.content == new.content))
}

/// Carries the time a version was first seen over to an unchanged version (for a Device, an
/// unchanged content: its status writes do not restart the hub's window).
fn keep_changed(old: Option<&Live>, new: &mut Live) {
    if let Some(old) = old
        && same_content(old, new)
    {
        new.changed = old.changed;
    }
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- pods ----------------------------------------------------------------------------

    /// Records a pod (`None`: gone) and returns the nodes affected.
    pub fn set_pod(&mut self, key: Key, entry: Option<PodEntry>) -> Touched {
        let mut touched = Touched::default();
        let old = self.pods.remove(&key);
        let new = entry.map(|mut e| {
            keep_changed(old.as_ref().map(|o| &o.live), &mut e.live);
            e
        });
        match (&old, &new) {
            (Some(o), Some(n)) if o == n => {}
            (Some(o), Some(n)) if o.node == n.node && o.refs == n.refs => {
                if only_version_moved(&o.live, &n.live) {
                    touched.later.insert(n.node.clone());
                } else {
                    touched.now.insert(n.node.clone());
                }
            }
            _ => {
                touched.now.extend(old.iter().map(|o| o.node.clone()));
                touched.now.extend(new.iter().map(|n| n.node.clone()));
            }
        }
        if let Some(o) = &old {
            unlink(&mut self.pods_by_node, &o.node, &key);
            for r in &o.refs {
                unlink(
                    &mut self.referrers,
                    &(r.kind, key.0.clone(), r.name.clone()),
                    &key,
                );
            }
        }
        if let Some(n) = new {
            link(&mut self.pods_by_node, n.node.clone(), key.clone());
            for r in &n.refs {
                link(
                    &mut self.referrers,
                    (r.kind, key.0.clone(), r.name.clone()),
                    key.clone(),
                );
            }
            self.pods.insert(key, n);
        }
        touched
    }

    pub fn pod_keys(&self) -> Vec<Key> {
        self.pods.keys().cloned().collect()
    }

    // ---- ConfigMaps, Secrets ----------------------------------------------------------------

    /// Records a ConfigMap or Secret (`None`: gone); the nodes of the pods referencing it are
    /// affected.
    pub fn set_referenced(&mut self, kind: Kind, key: Key, live: Option<Live>) -> Touched {
        let table = match kind {
            Kind::Secret => &mut self.secrets,
            _ => &mut self.configmaps,
        };
        let Some(change) = set_live(table, key.clone(), live) else {
            return Touched::default();
        };
        let mut touched = Touched::default();
        let pods = self.referrers.get(&(kind, key.0, key.1));
        for pod in pods.into_iter().flatten() {
            if let Some(p) = self.pods.get(pod) {
                match change {
                    Change::Version => touched.later.insert(p.node.clone()),
                    Change::Identity => touched.now.insert(p.node.clone()),
                };
            }
        }
        touched
    }

    pub fn referenced_keys(&self, kind: Kind) -> Vec<Key> {
        match kind {
            Kind::Secret => self.secrets.keys().cloned().collect(),
            _ => self.configmaps.keys().cloned().collect(),
        }
    }

    // ---- Devices, DeviceModels ----------------------------------------------------------------

    /// Records a Device (`None`: gone) and returns the nodes affected.
    pub fn set_device(&mut self, key: Key, entry: Option<DeviceEntry>) -> Touched {
        let mut touched = Touched::default();
        let old = self.devices.remove(&key);
        let new = entry.map(|mut e| {
            keep_changed(old.as_ref().map(|o| &o.live), &mut e.live);
            e
        });
        match (&old, &new) {
            (Some(o), Some(n)) if o == n => {}
            // A status write: the node's sync state cannot have changed.
            (Some(o), Some(n))
                if o.node == n.node && o.model == n.model && same_content(&o.live, &n.live) => {}
            (Some(o), Some(n))
                if o.node == n.node
                    && o.model == n.model
                    && only_version_moved(&o.live, &n.live) =>
            {
                touched.later.extend(n.node.clone());
            }
            _ => {
                touched
                    .now
                    .extend(old.iter().filter_map(|o| o.node.clone()));
                touched
                    .now
                    .extend(new.iter().filter_map(|n| n.node.clone()));
            }
        }
        if let Some(o) = &old {
            if let Some(node) = &o.node {
                unlink(&mut self.devices_by_node, node, &key);
            }
            unlink(
                &mut self.model_users,
                &(key.0.clone(), o.model.clone()),
                &key,
            );
        }
        if let Some(n) = new {
            if let Some(node) = &n.node {
                link(&mut self.devices_by_node, node.clone(), key.clone());
            }
            link(
                &mut self.model_users,
                (key.0.clone(), n.model.clone()),
                key.clone(),
            );
            self.devices.insert(key, n);
        }
        touched
    }

    pub fn device_keys(&self) -> Vec<Key> {
        self.devices.keys().cloned().collect()
    }

    /// Records a DeviceModel (`None`: gone); the nodes of the devices using it are affected.
    pub fn set_model(&mut self, key: Key, live: Option<Live>) -> Touched {
        let Some(change) = set_live(&mut self.models, key.clone(), live) else {
            return Touched::default();
        };
        let mut touched = Touched::default();
        for device in self.model_users.get(&key).into_iter().flatten() {
            if let Some(node) = self.devices.get(device).and_then(|d| d.node.clone()) {
                match change {
                    Change::Version => touched.later.insert(node),
                    Change::Identity => touched.now.insert(node),
                };
            }
        }
        touched
    }

    pub fn model_keys(&self) -> Vec<Key> {
        self.models.keys().cloned().collect()
    }

    // ---- nodes ----------------------------------------------------------------------------------

    /// Records a node (`None`: deleted).
    pub fn set_node(&mut self, name: &str, entry: Option<NodeEntry>) -> Touched {
        let old = match entry {
            Some(e) => self.nodes.insert(name.to_owned(), e),
            None => self.nodes.remove(name),
        };
        let mut touched = Touched::default();
        if old != entry {
            touched.now.insert(name.to_owned());
        }
        touched
    }

    pub fn node_names(&self) -> Vec<Key> {
        self.nodes
            .keys()
            .map(|n| (String::new(), n.clone()))
            .collect()
    }

    pub fn node_state(&self, node: &str) -> NodeState {
        match self.nodes.get(node) {
            Some(NodeEntry { edge: true }) => NodeState::Edge,
            Some(NodeEntry { edge: false }) => NodeState::NotEdge,
            None => NodeState::Gone,
        }
    }

    // ---- syncs ------------------------------------------------------------------------------------

    /// Records a sync (`None`: gone). Status-only changes (an ACK) affect no node: nothing the
    /// operator decides changes with them until the resync window, which is already scheduled.
    pub fn set_sync(&mut self, key: Key, mut entry: Option<SyncEntry>) -> Touched {
        let old = self.syncs.remove(&key);
        // A resync asked for is remembered ahead of the watch (see `note_resync`): an event
        // from before the ask must not make it look unasked, or it would be asked twice.
        if let (Some(o), Some(n)) = (&old, entry.as_mut())
            && o.created == n.created
        {
            n.resync_requested = n.resync_requested.max(o.resync_requested);
        }
        let mut touched = Touched::default();
        let structural = |s: &SyncEntry| {
            (
                s.node.clone(),
                s.kind,
                s.deleting,
                s.finalizers.clone(),
                s.adopted,
            )
        };
        match (&old, &entry) {
            (Some(o), Some(n)) if structural(o) == structural(n) => {}
            _ => {
                touched.now.extend(old.iter().map(|o| o.node.clone()));
                touched.now.extend(entry.iter().map(|n| n.node.clone()));
            }
        }
        if let Some(o) = &old {
            unlink(&mut self.syncs_by_node, &o.node, &key);
        }
        if let Some(n) = entry {
            link(&mut self.syncs_by_node, n.node.clone(), key.clone());
            self.syncs.insert(key, n);
        }
        touched
    }

    /// Records a resync the operator just asked for, before its watch event arrives.
    pub fn note_resync(&mut self, key: &Key, at: Timestamp) {
        if let Some(s) = self.syncs.get_mut(key) {
            s.resync_requested = s.resync_requested.max(Some(at));
        }
    }

    pub fn sync_keys(&self) -> Vec<Key> {
        self.syncs.keys().cloned().collect()
    }

    /// The syncs of `node`, by name.
    pub fn syncs_of(&self, node: &str) -> Vec<SyncEntry> {
        let mut out: Vec<SyncEntry> = self
            .syncs_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.syncs.get(k).cloned())
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// Every node something is known about: at start-up each is reconciled once.
    pub fn known_nodes(&self) -> BTreeSet<String> {
        self.pods_by_node
            .keys()
            .chain(self.devices_by_node.keys())
            .chain(self.syncs_by_node.keys())
            .cloned()
            .collect()
    }

    // ---- decisions' inputs ------------------------------------------------------------------------

    /// What `node` needs (empty unless it is an edge node): its pods and the ConfigMaps and
    /// Secrets they reference, its Devices and their DeviceModels. Objects referenced but not
    /// (yet) existing are left out: their creation affects the node then. Sorted, no
    /// duplicates.
    pub fn desired(&self, node: &str) -> Vec<Desired> {
        if self.node_state(node) != NodeState::Edge {
            return Vec::new();
        }
        let mut out: Vec<Desired> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut push = |ns: &str, kind: Kind, name: &str, live: &Live, out: &mut Vec<Desired>| {
            if !live.uid.is_empty() && seen.insert(live.uid.clone()) {
                out.push(Desired {
                    namespace: ns.to_owned(),
                    kind,
                    name: name.to_owned(),
                    live: live.clone(),
                });
            }
        };
        for key in self.pods_by_node.get(node).into_iter().flatten() {
            let Some(pod) = self.pods.get(key) else {
                continue;
            };
            push(&key.0, Kind::Pod, &key.1, &pod.live, &mut out);
            for r in &pod.refs {
                let table = match r.kind {
                    Kind::Secret => &self.secrets,
                    _ => &self.configmaps,
                };
                if let Some(live) = table.get(&(key.0.clone(), r.name.clone())) {
                    push(&key.0, r.kind, &r.name, live, &mut out);
                }
            }
        }
        for key in self.devices_by_node.get(node).into_iter().flatten() {
            let Some(device) = self.devices.get(key) else {
                continue;
            };
            push(&key.0, Kind::Device, &key.1, &device.live, &mut out);
            if let Some(live) = self.models.get(&(key.0.clone(), device.model.clone())) {
                push(&key.0, Kind::DeviceModel, &device.model, live, &mut out);
            }
        }
        out.sort_by(|a, b| (&a.namespace, a.kind, &a.name).cmp(&(&b.namespace, b.kind, &b.name)));
        out
    }

    /// The live object a sync tracks, if the operator holds it and its UID matches.
    pub fn live_of(&self, sync: &SyncEntry) -> Option<&Live> {
        let key = (sync.namespace.clone(), sync.object_name.clone());
        let live = match sync.kind? {
            Kind::Pod => self.pods.get(&key).map(|p| &p.live),
            Kind::ConfigMap => self.configmaps.get(&key),
            Kind::Secret => self.secrets.get(&key),
            Kind::Device => self.devices.get(&key).map(|d| &d.live),
            Kind::DeviceModel => self.models.get(&key),
        }?;
        (live.uid == sync.uid).then_some(live)
    }

    /// Every sync, for the periodic census behind the gauges.
    pub fn all_syncs(&self) -> impl Iterator<Item = &SyncEntry> {
        self.syncs.values()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Same object, new resourceVersion.
    Version,
    /// Appeared, disappeared or replaced (new UID).
    Identity,
}

fn set_live(table: &mut HashMap<Key, Live>, key: Key, live: Option<Live>) -> Option<Change> {
    let old = table.remove(&key);
    let change = match (&old, &live) {
        (None, None) => None,
        (Some(o), Some(n)) if o.uid == n.uid && o.rv == n.rv => None,
        (Some(o), Some(n)) if only_version_moved(o, n) => Some(Change::Version),
        _ => Some(Change::Identity),
    };
    if let Some(mut n) = live {
        keep_changed(old.as_ref(), &mut n);
        table.insert(key, n);
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn live(uid: &str, rv: &str) -> Live {
        Live {
            uid: uid.into(),
            rv: rv.into(),
            content: None,
            changed: t(0),
        }
    }

    fn key(name: &str) -> Key {
        ("ns".into(), name.into())
    }

    fn pod(uid: &str, rv: &str, node: &str, refs: &[(Kind, &str)]) -> PodEntry {
        PodEntry {
            live: live(uid, rv),
            node: node.into(),
            refs: refs
                .iter()
                .map(|(k, n)| Ref {
                    kind: *k,
                    name: (*n).into(),
                })
                .collect(),
        }
    }

    fn nodes(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    fn edge(index: &mut Index, name: &str) {
        index.set_node(name, Some(NodeEntry { edge: true }));
    }

    #[test]
    fn desired_set_follows_pods_refs_devices_and_models() {
        let mut index = Index::new();
        edge(&mut index, "a");
        edge(&mut index, "b");
        index.set_pod(
            key("p1"),
            Some(pod(
                "u-p1",
                "1",
                "a",
                &[(Kind::ConfigMap, "cm"), (Kind::Secret, "missing")],
            )),
        );
        index.set_pod(
            key("p2"),
            Some(pod("u-p2", "1", "a", &[(Kind::ConfigMap, "cm")])),
        );
        index.set_pod(key("p3"), Some(pod("u-p3", "1", "b", &[])));
        index.set_referenced(Kind::ConfigMap, key("cm"), Some(live("u-cm", "5")));
        index.set_device(
            key("d1"),
            Some(DeviceEntry {
                live: live("u-d1", "3"),
                node: Some("a".into()),
                model: "m".into(),
            }),
        );
        index.set_model(key("m"), Some(live("u-m", "2")));

        let a: Vec<_> = index
            .desired("a")
            .into_iter()
            .map(|d| (d.kind, d.name))
            .collect();
        assert_eq!(
            a,
            [
                (Kind::Pod, "p1".to_string()),
                (Kind::Pod, "p2".to_string()),
                (Kind::ConfigMap, "cm".to_string()),
                (Kind::Device, "d1".to_string()),
                (Kind::DeviceModel, "m".to_string()),
            ]
        );
        assert_eq!(index.desired("b").len(), 1);
        // A node that is not an edge node needs nothing.
        index.set_node("b", Some(NodeEntry { edge: false }));
        assert!(index.desired("b").is_empty());
        assert_eq!(index.node_state("b"), NodeState::NotEdge);
        assert_eq!(index.node_state("zzz"), NodeState::Gone);
    }

    #[test]
    fn changes_touch_only_the_nodes_concerned() {
        let mut index = Index::new();
        edge(&mut index, "a");
        let p = pod("u-p1", "1", "a", &[(Kind::Secret, "s")]);
        assert_eq!(nodes(&index.set_pod(key("p1"), Some(p.clone())).now), ["a"]);
        // Same pod again: nothing.
        assert!(index.set_pod(key("p1"), Some(p)).is_empty());
        // A new version only: the node is looked at after the window.
        let t = index.set_pod(
            key("p1"),
            Some(pod("u-p1", "2", "a", &[(Kind::Secret, "s")])),
        );
        assert_eq!((nodes(&t.now), nodes(&t.later)), (vec![], vec!["a"]));
        // The referenced secret appears: now; then changes: later; a secret no pod uses: none.
        let t = index.set_referenced(Kind::Secret, key("s"), Some(live("u-s", "1")));
        assert_eq!(nodes(&t.now), ["a"]);
        let t = index.set_referenced(Kind::Secret, key("s"), Some(live("u-s", "2")));
        assert_eq!(nodes(&t.later), ["a"]);
        assert!(
            index
                .set_referenced(Kind::Secret, key("other"), Some(live("u-o", "1")))
                .is_empty()
        );
        // A ConfigMap of the same name as the secret is another object.
        assert!(
            index
                .set_referenced(Kind::ConfigMap, key("s"), Some(live("u-c", "1")))
                .is_empty()
        );
        // The pod drops the reference, then goes.
        let t = index.set_pod(key("p1"), Some(pod("u-p1", "3", "a", &[])));
        assert_eq!(nodes(&t.now), ["a"]);
        assert!(
            index
                .set_referenced(Kind::Secret, key("s"), Some(live("u-s", "3")))
                .is_empty()
        );
        assert_eq!(nodes(&index.set_pod(key("p1"), None).now), ["a"]);
        assert!(index.known_nodes().is_empty());
    }

    #[test]
    fn a_device_moving_touches_both_nodes() {
        let mut index = Index::new();
        let dev = |node: &str| DeviceEntry {
            live: live("u-d", "1"),
            node: Some(node.into()),
            model: "m".into(),
        };
        index.set_device(key("d"), Some(dev("a")));
        let t = index.set_device(key("d"), Some(dev("b")));
        assert_eq!(nodes(&t.now), ["a", "b"]);
        let t = index.set_model(key("m"), Some(live("u-m", "1")));
        assert_eq!(nodes(&t.now), ["b"]);
    }

    /// A Device status write (new resourceVersion, same content version) touches no node and
    /// keeps the time its content was first seen: the resend window is not restarted.
    #[test]
    fn a_device_status_write_touches_nothing() {
        let mut index = Index::new();
        edge(&mut index, "a");
        let dev = |rv: &str, content: &str, at: i64| DeviceEntry {
            live: Live {
                content: Some(content.into()),
                changed: t(at),
                ..live("u-d", rv)
            },
            node: Some("a".into()),
            model: "m".into(),
        };
        index.set_device(key("d"), Some(dev("1", "1-x", 0)));
        let t1 = index.set_device(key("d"), Some(dev("2", "1-x", 50)));
        assert!(t1.is_empty(), "status write: {t1:?}");
        let d = index
            .desired("a")
            .into_iter()
            .find(|d| d.name == "d")
            .unwrap();
        assert_eq!((d.live.rv.as_str(), d.live.changed), ("2", t(0)));
        let t2 = index.set_device(key("d"), Some(dev("3", "2-x", 60)));
        assert_eq!(
            nodes(&t2.later),
            ["a"],
            "spec change: the hub's window, then a check"
        );
        let d = index
            .desired("a")
            .into_iter()
            .find(|d| d.name == "d")
            .unwrap();
        assert_eq!(d.live.changed, t(60));
    }

    #[test]
    fn unchanged_versions_keep_their_first_seen_time() {
        let mut index = Index::new();
        edge(&mut index, "a");
        index.set_referenced(Kind::ConfigMap, key("cm"), Some(live("u", "1")));
        let later = Live {
            changed: t(100),
            ..live("u", "1")
        };
        index.set_referenced(Kind::ConfigMap, key("cm"), Some(later));
        index.set_pod(
            key("p"),
            Some(pod("u-p", "1", "a", &[(Kind::ConfigMap, "cm")])),
        );
        let cm = index
            .desired("a")
            .into_iter()
            .find(|d| d.kind == Kind::ConfigMap)
            .unwrap();
        assert_eq!(cm.live.changed, t(0));
    }

    fn sync(name: &str, node: &str) -> SyncEntry {
        SyncEntry {
            namespace: "ns".into(),
            name: name.into(),
            node: node.into(),
            uid: "u".into(),
            kind: Some(Kind::Pod),
            object_name: "p".into(),
            acked: None,
            acked_content: None,
            last_attempt: None,
            created: None,
            resync_requested: None,
            deleting: false,
            finalizers: vec![],
            adopted: true,
        }
    }

    #[test]
    fn sync_acks_touch_nothing_structure_does() {
        let mut index = Index::new();
        let s = sync("a.u", "a");
        assert_eq!(
            nodes(&index.set_sync(key("a.u"), Some(s.clone())).now),
            ["a"]
        );
        let acked = SyncEntry {
            acked: Some("7".into()),
            acked_content: None,
            ..s.clone()
        };
        assert!(index.set_sync(key("a.u"), Some(acked)).is_empty());
        let deleting = SyncEntry {
            deleting: true,
            ..s
        };
        assert_eq!(
            nodes(&index.set_sync(key("a.u"), Some(deleting)).now),
            ["a"]
        );
        assert_eq!(index.syncs_of("a").len(), 1);
        assert_eq!(nodes(&index.set_sync(key("a.u"), None).now), ["a"]);
        assert!(index.syncs_of("a").is_empty());
    }

    #[test]
    fn a_resync_asked_for_is_not_forgotten_by_an_older_event() {
        let mut index = Index::new();
        let s = sync("a.u", "a");
        index.set_sync(key("a.u"), Some(s.clone()));
        index.note_resync(&key("a.u"), t(5));
        // An event from before the ask (no annotation yet) arrives late.
        index.set_sync(key("a.u"), Some(s.clone()));
        assert_eq!(index.syncs_of("a")[0].resync_requested, Some(t(5)));
        // A sync deleted and created anew starts afresh.
        index.set_sync(key("a.u"), None);
        let recreated = SyncEntry {
            created: Some(t(10)),
            ..s
        };
        index.set_sync(key("a.u"), Some(recreated));
        assert_eq!(index.syncs_of("a")[0].resync_requested, None);
    }

    #[test]
    fn live_of_checks_the_uid() {
        let mut index = Index::new();
        index.set_pod(key("p"), Some(pod("u", "9", "a", &[])));
        let s = sync("a.u", "a");
        assert_eq!(index.live_of(&s).map(|l| l.rv.as_str()), Some("9"));
        let other = SyncEntry {
            uid: "old".into(),
            ..s.clone()
        };
        assert_eq!(index.live_of(&other), None);
        let foreign = SyncEntry { kind: None, ..s };
        assert_eq!(index.live_of(&foreign), None);
    }
}
